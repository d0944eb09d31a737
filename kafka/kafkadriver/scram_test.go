package kafkadriver

import (
	"context"
	"strings"
	"testing"
)

// The SCRAM-SHA-256 exchange of RFC 7677, section 3, with its fixed nonce.
func TestSCRAMMatchesRFC7677(t *testing.T) {
	const (
		clientNonce = "rOprNGfwEbeRWgbNEkqO"
		serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
		clientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
		serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	)
	m, err := newSCRAM(SCRAMSHA256, "user", "pencil")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sess := &scramSession{m: m.(*scramMechanism), nonce: clientNonce, clientFirst: "n=user,r=" + clientNonce}
	done, resp, err := sess.Next(ctx, []byte(serverFirst))
	if err != nil || done || string(resp) != clientFinal {
		t.Fatalf("client-final = %q, %v, %v; want %q", resp, done, err, clientFinal)
	}
	if done, _, err := sess.Next(ctx, []byte(serverFinal)); err != nil || !done {
		t.Fatalf("server-final not accepted: %v, %v", done, err)
	}

	forged := &scramSession{m: m.(*scramMechanism), nonce: clientNonce, clientFirst: "n=user,r=" + clientNonce}
	if _, _, err := forged.Next(ctx, []byte(serverFirst)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := forged.Next(ctx, []byte("v=AAAA")); err == nil {
		t.Fatal("a server signature that does not match was accepted")
	}
}

func TestSCRAMStartEscapesTheUserName(t *testing.T) {
	m, err := newSCRAM(SCRAMSHA512, "a=b,c", "pw")
	if err != nil {
		t.Fatal(err)
	}
	_, first, err := m.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(first), "n,,n=a=3Db=2Cc,r=") {
		t.Fatalf("client-first = %q", first)
	}
	for _, bad := range []string{"r=other,s=c2FsdA==,i=4096", "m=ext,r=x"} {
		sess, _, _ := m.Start(context.Background())
		if _, _, err := sess.Next(context.Background(), []byte(bad)); err == nil {
			t.Errorf("server-first %q accepted", bad)
		}
	}
}
