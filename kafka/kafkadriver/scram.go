package kafkadriver

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"github.com/segmentio/kafka-go/sasl"
)

// scramMechanism is a SASL SCRAM client (RFC 5802, RFC 7677) for kafka-go.
// kafka-go's own sasl/scram package needs a module this repository does
// not carry, and the exchange is short. Credentials are used as given,
// without SASLprep normalization, which matters only for non-ASCII names
// and passwords.
type scramMechanism struct {
	name     string
	hash     func() hash.Hash
	user     string
	password string
}

func newSCRAM(alg SCRAM, user, password string) (sasl.Mechanism, error) {
	m := &scramMechanism{user: user, password: password}
	switch alg {
	case SCRAMSHA256:
		m.name, m.hash = "SCRAM-SHA-256", sha256.New
	case SCRAMSHA512:
		m.name, m.hash = "SCRAM-SHA-512", sha512.New
	default:
		return nil, fmt.Errorf("unknown SCRAM algorithm %d", int(alg))
	}
	if user == "" {
		return nil, errors.New("SCRAM needs a user name")
	}
	return m, nil
}

func (m *scramMechanism) Name() string { return m.name }

func (m *scramMechanism) Start(ctx context.Context) (sasl.StateMachine, []byte, error) {
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, nil, err
	}
	nonce := base64.RawStdEncoding.EncodeToString(raw[:])
	escaper := strings.NewReplacer("=", "=3D", ",", "=2C")
	first := "n=" + escaper.Replace(m.user) + ",r=" + nonce
	return &scramSession{m: m, nonce: nonce, clientFirst: first}, []byte("n,," + first), nil
}

// scramSession is one exchange: client-first (sent by Start), then
// server-first -> client-final, then server-final is verified.
type scramSession struct {
	m           *scramMechanism
	nonce       string
	clientFirst string // without the gs2 header
	serverSig   []byte
	sentFinal   bool
}

func (s *scramSession) Next(ctx context.Context, challenge []byte) (bool, []byte, error) {
	if !s.sentFinal {
		s.sentFinal = true
		resp, err := s.final(string(challenge))
		return false, resp, err
	}
	attrs := scramAttrs(string(challenge))
	if e, ok := attrs["e"]; ok {
		return false, nil, fmt.Errorf("SCRAM: server refused the credentials: %s", e)
	}
	sig, err := base64.StdEncoding.DecodeString(attrs["v"])
	if err != nil || subtle.ConstantTimeCompare(sig, s.serverSig) != 1 {
		return false, nil, errors.New("SCRAM: the server's signature does not match; it does not know the password")
	}
	return true, nil, nil
}

// final answers the server-first message with the client proof.
func (s *scramSession) final(serverFirst string) ([]byte, error) {
	attrs := scramAttrs(serverFirst)
	if _, ok := attrs["m"]; ok {
		return nil, errors.New("SCRAM: the server requires an extension this client lacks")
	}
	nonce := attrs["r"]
	if !strings.HasPrefix(nonce, s.nonce) || len(nonce) == len(s.nonce) {
		return nil, errors.New("SCRAM: the server's nonce does not extend the client's")
	}
	salt, err := base64.StdEncoding.DecodeString(attrs["s"])
	if err != nil || len(salt) == 0 {
		return nil, errors.New("SCRAM: the server sent no valid salt")
	}
	iterations, err := strconv.Atoi(attrs["i"])
	if err != nil || iterations < 1 {
		return nil, errors.New("SCRAM: the server sent no valid iteration count")
	}
	salted, err := pbkdf2.Key(s.m.hash, s.m.password, salt, iterations, s.m.hash().Size())
	if err != nil {
		return nil, fmt.Errorf("SCRAM: %w", err)
	}
	clientKey := s.mac(salted, "Client Key")
	h := s.m.hash()
	h.Write(clientKey)
	storedKey := h.Sum(nil)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte("n,,")) + ",r=" + nonce
	authMessage := s.clientFirst + "," + serverFirst + "," + withoutProof
	proof := s.mac(storedKey, authMessage)
	for i := range proof {
		proof[i] ^= clientKey[i]
	}
	s.serverSig = s.mac(s.mac(salted, "Server Key"), authMessage)
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

func (s *scramSession) mac(key []byte, msg string) []byte {
	h := hmac.New(s.m.hash, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// scramAttrs splits "a=1,b=2" into its attributes.
func scramAttrs(msg string) map[string]string {
	attrs := make(map[string]string)
	for _, kv := range strings.Split(msg, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && len(k) == 1 {
			attrs[k] = v
		}
	}
	return attrs
}
