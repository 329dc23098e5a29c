package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// testCA issues certificates for the TLS test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: dir}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	return ca
}

// issue writes NAME.pem and NAME-key.pem, a server certificate for ip or
// a client certificate.
func (ca *testCA) issue(t *testing.T, name string, ip net.IP, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestClusterTLS: with etcd requiring client certificates, a host whose
// [cluster] table names the CA, its certificate and key pushes, and its
// agent receives the configuration and publishes itself; a host with a
// certificate from another CA, or without the CA that verifies the
// server, is refused (exit 1) and writes nothing.
func TestClusterTLS(t *testing.T) {
	c := newCluster(t, 1)
	pki := t.TempDir()
	ca := newTestCA(t, pki, "ca")
	other := newTestCA(t, t.TempDir(), "other")
	serverCert, serverKey := ca.issue(t, "server", net.ParseIP(labnet.CoreAddr), 2)
	clientCert, clientKey := ca.issue(t, "client", nil, 3)
	strangerCert, strangerKey := other.issue(t, "stranger", nil, 4)
	newEtcd(t, c.Core, "https",
		"--cert-file", serverCert, "--key-file", serverKey, "--client-cert-auth", "--trusted-ca-file", filepath.Join(pki, "ca.pem"))

	lab := c.Labs[0]
	h := &clusterHost{hv: &hv{t: t, lab: lab, ns: lab.Hypervisor(), config: t.TempDir(), backend: "nft",
		env: []string{"VMFW_RUN_DIR=" + t.TempDir(), "VMFW_STATE_DIR=" + t.TempDir()}}, name: "hv0"}
	table := func(tls string) string {
		return fmt.Sprintf("[cluster]\nendpoints = [\"https://%s:2379\"]\nhost = \"hv0\"\nlease_ttl = \"3s\"\ncache_dir = %q\n%s",
			labnet.CoreAddr, filepath.Join(h.config, "cache"), tls)
	}
	conf := t.TempDir()
	configtest.Write(t, conf, map[string]string{"groups/web.toml": webGroup, "groups/app.toml": appGroupV1, "vms/101.toml": clusterVM(101, "web")})

	for what, tls := range map[string]string{
		"a certificate of another CA": fmt.Sprintf("ca_file = %q\ncert_file = %q\nkey_file = %q\n", filepath.Join(pki, "ca.pem"), strangerCert, strangerKey),
		"no CA for the server":        fmt.Sprintf("cert_file = %q\nkey_file = %q\n", clientCert, clientKey),
	} {
		h.write("vmfw.toml", table(tls))
		if _, errOut, code := h.run("cluster", "push", conf); code != 1 || !strings.Contains(errOut, "etcd") {
			t.Errorf("%s: push exit %d, %q", what, code, errOut)
		}
	}

	h.write("vmfw.toml", table(fmt.Sprintf("ca_file = %q\ncert_file = %q\nkey_file = %q\n", filepath.Join(pki, "ca.pem"), clientCert, clientKey)))
	if st := h.status(); st.Revision != 0 {
		t.Fatalf("a refused push wrote revision %d", st.Revision)
	}
	h.vmfw("cluster", "push", conf)
	rev := h.status().Revision
	h.start()
	within(t, 2*time.Second, "the agent publishes itself over TLS", func() bool {
		st := h.status()
		return len(st.Hosts) == 1 && st.Hosts[0].Alive && st.Hosts[0].Revision == rev
	})
	if out := h.vmfw("cluster", "status"); !regexp.MustCompile(fmt.Sprintf(`(?m)^configuration: revision %d, 3 files`, rev)).MatchString(out) ||
		!regexp.MustCompile(fmt.Sprintf(`(?m)^hv0 +alive +%d +0 +yes$`, rev)).MatchString(out) {
		t.Errorf("vmfw cluster status:\n%s", out)
	}
	if out := h.vmfw("status"); !strings.Contains(out, fmt.Sprintf("configuration revision %d", rev)) {
		t.Errorf("vmfw status:\n%s", out)
	}
}
