package herald

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	"github.com/heraldbus/herald/codec"
)

// Optional methods an event type may have. They are looked up on the value
// type and on the pointer type.
type (
	// Topicer names the event's topic. It is called once, on the zero
	// value, when the type is first seen: a type's topic is static.
	Topicer interface{ Topic() string }
	// EventNamer names the event on the wire (HeaderEvent). Without it the
	// name is the type's import path and name, e.g.
	// "github.com/acme/orders/events.OrderPlaced".
	EventNamer interface{ EventName() string }
	// Keyer gives the message key of an event value (per-key order).
	Keyer interface{ Key() string }
)

// NamingStrategy derives a topic from an event type that was neither
// registered explicitly nor has a Topic method. It returns "" to refuse.
type NamingStrategy func(t reflect.Type) string

// SnakeCaseTopics is a NamingStrategy: OrderPlaced -> "order_placed".
func SnakeCaseTopics(t reflect.Type) string {
	var b strings.Builder
	name := t.Name()
	for i, r := range name {
		if unicode.IsUpper(r) {
			if i > 0 {
				prev, _ := utf8.DecodeLastRuneInString(name[:i])
				if !unicode.IsUpper(prev) || (i+1 < len(name) && unicode.IsLower(rune(name[i+1]))) {
					b.WriteByte('_')
				}
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// EventType is what the registry knows about one event type.
type EventType struct {
	// Type is the registered type with pointers removed (OrderPlaced for
	// both OrderPlaced and *OrderPlaced).
	Type reflect.Type
	// Name travels in HeaderEvent.
	Name string
	// Topic is where events of the type are published.
	Topic string
	// Codec encodes the type; nil means the bus default.
	Codec codec.Codec

	key func(v any) string
}

// Key returns the message key for an event value of this type ("" if the
// type has no key).
func (et *EventType) Key(v any) string {
	if et.key == nil {
		return ""
	}
	return et.key(v)
}

// EventRegistry maps event types to topics and event names. It is safe for
// concurrent use; lookups take no lock.
type EventRegistry struct {
	naming NamingStrategy
	mu     sync.Mutex                                  // serializes writers
	types  atomic.Pointer[map[reflect.Type]*EventType] // copy on write
	names  map[string]*EventType                       // guarded by mu
}

// newEventRegistry returns an empty registry. naming (optional) places
// types that were not registered and have no Topic method.
func newEventRegistry(naming NamingStrategy) *EventRegistry {
	r := &EventRegistry{naming: naming, names: make(map[string]*EventType)}
	empty := make(map[reflect.Type]*EventType)
	r.types.Store(&empty)
	return r
}

// RegistryHolder is anything Register can register types in: a *Bus or a
// *Publisher.
type RegistryHolder interface{ Registry() *EventRegistry }

// RegisterOption configures one registration.
type RegisterOption func(*registration)

type registration struct {
	name    string
	codec   codec.Codec
	key     func(any) string
	keyType reflect.Type
}

// WithEventName sets the event name carried in HeaderEvent, overriding an
// EventName method and the default.
func WithEventName(name string) RegisterOption {
	return func(r *registration) { r.name = name }
}

// WithCodec encodes this type with c instead of the bus default.
func WithCodec(c codec.Codec) RegisterOption {
	return func(r *registration) { r.codec = c }
}

// WithKey derives the message key of each event of type E with f,
// overriding a Key method.
func WithKey[E any](f func(E) string) RegisterOption {
	return func(r *registration) {
		r.keyType = reflect.TypeFor[E]()
		r.key = func(v any) string {
			switch e := v.(type) {
			case E:
				return f(e)
			case *E:
				return f(*e)
			}
			return ""
		}
	}
}

// Register maps event type E to topic in h's registry. Registering the same
// type again with the same settings is a no-op; with other settings, or
// with an event name another type holds, it fails with ErrDuplicateEvent
// (a registration with WithKey cannot be repeated: functions do not
// compare).
// Several types may share a topic.
func Register[E any](h RegistryHolder, topic string, opts ...RegisterOption) error {
	_, err := h.Registry().register(reflect.TypeFor[E](), topic, opts...)
	return err
}

// MustRegister is Register that panics on error, for package setup.
func MustRegister[E any](h RegistryHolder, topic string, opts ...RegisterOption) {
	if err := Register[E](h, topic, opts...); err != nil {
		panic(err)
	}
}

// baseType strips pointers: events are registered and looked up by the
// type they point to.
func baseType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func (r *EventRegistry) register(t reflect.Type, topic string, opts ...RegisterOption) (*EventType, error) {
	var reg registration
	for _, o := range opts {
		o(&reg)
	}
	base := baseType(t)
	if reg.keyType != nil && baseType(reg.keyType) != base {
		return nil, fmt.Errorf("herald: register %s: WithKey is for %s", base, reg.keyType)
	}
	if err := ValidateName("topic", topic); err != nil {
		return nil, err
	}
	et := &EventType{Type: base, Topic: topic, Codec: reg.codec, key: reg.key}
	et.Name = reg.name
	if et.Name == "" {
		et.Name = defaultEventName(base)
	}
	if err := validateEventName(et.Name); err != nil {
		return nil, err
	}
	if et.key == nil {
		et.key = keyMethod(base)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	types := *r.types.Load()
	if old := types[base]; old != nil {
		if old.Topic == et.Topic && old.Name == et.Name && old.Codec == et.Codec && reg.key == nil {
			return old, nil
		}
		return nil, fmt.Errorf("%w: %s is registered as %q on topic %q", ErrDuplicateEvent, base, old.Name, old.Topic)
	}
	if other := r.names[et.Name]; other != nil {
		return nil, fmt.Errorf("%w: event name %q already belongs to %s", ErrDuplicateEvent, et.Name, other.Type)
	}
	next := make(map[reflect.Type]*EventType, len(types)+1)
	for k, v := range types {
		next[k] = v
	}
	next[base] = et
	r.names[et.Name] = et
	r.types.Store(&next)
	return et, nil
}

// Lookup returns the registration of t (pointers are stripped). A type that
// is not registered is registered on the fly when it has a Topic method or
// the registry has a naming strategy; otherwise Lookup returns an
// *UnregisteredError.
func (r *EventRegistry) Lookup(t reflect.Type) (*EventType, error) {
	base := baseType(t)
	if et := (*r.types.Load())[base]; et != nil {
		return et, nil
	}
	topic := topicMethod(base)
	if topic == "" && r.naming != nil {
		topic = r.naming(base)
	}
	if topic == "" {
		return nil, &UnregisteredError{Type: base.String()}
	}
	return r.register(base, topic)
}

// ByName returns the registration whose event name is name.
func (r *EventRegistry) ByName(name string) (*EventType, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	et, ok := r.names[name]
	return et, ok
}

func defaultEventName(t reflect.Type) string {
	if n := namerMethod(t); n != "" {
		return n
	}
	if t.PkgPath() == "" {
		return t.String()
	}
	return t.PkgPath() + "." + t.Name()
}

func validateEventName(name string) error {
	if name == "" || len(name) > 255 || !utf8.ValidString(name) {
		return &NameError{Kind: "event name", Name: name, Reason: "must be 1 to 255 bytes of UTF-8"}
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return &NameError{Kind: "event name", Name: name, Reason: "control characters are not allowed"}
		}
	}
	return nil
}

// zeroOf returns a zero value of t, and of *t, for calling optional methods.
func zeroOf(t reflect.Type) (value, pointer any) {
	p := reflect.New(t)
	return p.Elem().Interface(), p.Interface()
}

// optional returns what t's optional method m returns, called on a zero
// value of t or, failing that, of *t; "" when t has no such method.
func optional[I any](t reflect.Type, m func(I) string) string {
	v, p := zeroOf(t)
	if x, ok := v.(I); ok {
		return m(x)
	}
	if x, ok := p.(I); ok {
		return m(x)
	}
	return ""
}

func topicMethod(t reflect.Type) string { return optional(t, Topicer.Topic) }

func namerMethod(t reflect.Type) string { return optional(t, EventNamer.EventName) }

func keyMethod(t reflect.Type) func(any) string {
	if !t.Implements(reflect.TypeFor[Keyer]()) && !reflect.PointerTo(t).Implements(reflect.TypeFor[Keyer]()) {
		return nil
	}
	return func(v any) string {
		if k, ok := v.(Keyer); ok {
			return k.Key()
		}
		// A value whose Key method has a pointer receiver.
		p := reflect.New(reflect.TypeOf(v))
		p.Elem().Set(reflect.ValueOf(v))
		if k, ok := p.Interface().(Keyer); ok {
			return k.Key()
		}
		return ""
	}
}
