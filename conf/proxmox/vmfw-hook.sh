#!/bin/sh
exec /usr/local/sbin/vmfw hook proxmox "$@"
