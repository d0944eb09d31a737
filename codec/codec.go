// Package codec turns event values into message payloads and back.
//
// A Codec is chosen by content type: the publisher stamps Message.ContentType
// with the codec it used, and the subscriber decodes with the codec registered
// for that content type. A Registry holds the codecs of one Bus; there is no
// package-level registry, so tests and buses never share codec state.
package codec

import (
	"errors"
	"fmt"
	"sync"
)

// Codec encodes and decodes payloads of one content type. Implementations
// are safe for concurrent use.
type Codec interface {
	// ContentType is the MIME type stamped on messages this codec encodes.
	ContentType() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, which is a non-nil pointer.
	Unmarshal(data []byte, v any) error
}

// ErrUnknownContentType is returned by Registry.Lookup for a content type
// no codec is registered for.
var ErrUnknownContentType = errors.New("codec: no codec for content type")

// Registry maps content types to codecs. The zero value is not usable; use
// NewRegistry. Safe for concurrent use.
type Registry struct {
	mu     sync.RWMutex
	codecs map[string]Codec
}

// NewRegistry returns a registry holding JSON and the given codecs (later
// ones replace earlier ones of the same content type). Protocol Buffers is
// in its own module, github.com/heraldbus/herald/codec/protobuf, so that a
// program that does not use it does not build it.
func NewRegistry(codecs ...Codec) *Registry {
	r := &Registry{codecs: make(map[string]Codec)}
	r.Register(JSON{})
	for _, c := range codecs {
		r.Register(c)
	}
	return r
}

// Register adds c, replacing any codec of the same content type.
func (r *Registry) Register(c Codec) {
	r.mu.Lock()
	r.codecs[c.ContentType()] = c
	r.mu.Unlock()
}

// Lookup returns the codec for contentType. An empty content type means
// JSON, the default, so messages from producers that set none still decode.
func (r *Registry) Lookup(contentType string) (Codec, error) {
	if contentType == "" {
		contentType = JSONContentType
	}
	r.mu.RLock()
	c, ok := r.codecs[contentType]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownContentType, contentType)
	}
	return c, nil
}
