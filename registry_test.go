package herald_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/heraldbus/herald"
	"github.com/heraldbus/herald/drivertest"
)

type OrderPlaced struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

func (o OrderPlaced) Key() string { return o.ID }

type OrderShipped struct {
	ID string `json:"id"`
}

type withTopic struct{ N int }

func (withTopic) Topic() string { return "from.method" }

type named struct{}

func (*named) EventName() string { return "acme.Named.v1" }

// Event has the same type name as drivertest.Event in another package.
type Event struct{ X int }

type HTTPRequestSeen struct{}

func TestRegisterAndLookup(t *testing.T) {
	r := newRegistry(t, nil)
	if err := herald.Register[OrderPlaced](r, "orders"); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[OrderPlaced](), reflect.TypeFor[*OrderPlaced]()} {
		et, err := r.Lookup(typ)
		if err != nil {
			t.Fatalf("Lookup(%v): %v", typ, err)
		}
		if et.Topic != "orders" || et.Name != "github.com/heraldbus/herald_test.OrderPlaced" {
			t.Fatalf("got topic %q name %q", et.Topic, et.Name)
		}
		if k := et.Key(OrderPlaced{ID: "o-1"}); k != "o-1" {
			t.Fatalf("Key method: got %q", k)
		}
		if k := et.Key(&OrderPlaced{ID: "o-2"}); k != "o-2" {
			t.Fatalf("Key method via pointer: got %q", k)
		}
	}
	// Same settings again: no-op. Other settings: refused.
	if err := herald.Register[OrderPlaced](r, "orders"); err != nil {
		t.Fatalf("idempotent register: %v", err)
	}
	if err := herald.Register[OrderPlaced](r, "other"); !errors.Is(err, herald.ErrDuplicateEvent) {
		t.Fatalf("conflicting register: %v", err)
	}
}

func TestUnregisteredAndAutoRegistration(t *testing.T) {
	r := newRegistry(t, nil)
	_, err := r.Lookup(reflect.TypeFor[OrderShipped]())
	var ue *herald.UnregisteredError
	if !errors.As(err, &ue) || !errors.Is(err, herald.ErrUnregisteredEvent) {
		t.Fatalf("got %v, want UnregisteredError", err)
	}
	et, err := r.Lookup(reflect.TypeFor[withTopic]())
	if err != nil || et.Topic != "from.method" {
		t.Fatalf("Topic method: %v %+v", err, et)
	}
	withNaming := newRegistry(t, herald.SnakeCaseTopics)
	et, err = withNaming.Lookup(reflect.TypeFor[OrderShipped]())
	if err != nil || et.Topic != "order_shipped" {
		t.Fatalf("naming strategy: %v %+v", err, et)
	}
}

func TestSnakeCaseTopics(t *testing.T) {
	for typ, want := range map[reflect.Type]string{
		reflect.TypeFor[OrderPlaced]():     "order_placed",
		reflect.TypeFor[HTTPRequestSeen](): "http_request_seen",
		reflect.TypeFor[Event]():           "event",
	} {
		if got := herald.SnakeCaseTopics(typ); got != want {
			t.Errorf("%v: got %q, want %q", typ, got, want)
		}
	}
}

func TestEventNames(t *testing.T) {
	r := newRegistry(t, nil)
	// Equal type names in different packages do not collide.
	herald.MustRegister[Event](r, "shared")
	herald.MustRegister[drivertest.Event](r, "shared")
	a, _ := r.Lookup(reflect.TypeFor[Event]())
	b, _ := r.Lookup(reflect.TypeFor[drivertest.Event]())
	if a.Name == b.Name {
		t.Fatalf("both types are named %q", a.Name)
	}
	// An EventName method (pointer receiver) names the event.
	herald.MustRegister[named](r, "named")
	et, _ := r.Lookup(reflect.TypeFor[named]())
	if et.Name != "acme.Named.v1" {
		t.Fatalf("EventName method ignored: %q", et.Name)
	}
	// A name already held by another type is refused.
	err := herald.Register[OrderShipped](r, "x", herald.WithEventName("acme.Named.v1"))
	if !errors.Is(err, herald.ErrDuplicateEvent) {
		t.Fatalf("duplicate name: %v", err)
	}
	if got, ok := r.ByName("acme.Named.v1"); !ok || got.Type != reflect.TypeFor[named]() {
		t.Fatal("ByName lost the first owner")
	}
	if err := herald.Register[OrderShipped](r, "x", herald.WithEventName("bad\x00name")); !errors.Is(err, herald.ErrInvalidName) {
		t.Fatalf("control character in event name: %v", err)
	}
}

func TestRegisterRejectsBadInput(t *testing.T) {
	r := newRegistry(t, nil)
	for _, topic := range []string{"", "a b", "x;drop table", string(make([]byte, 201))} {
		err := herald.Register[OrderShipped](r, topic)
		var ne *herald.NameError
		if !errors.As(err, &ne) || !errors.Is(err, herald.ErrInvalidName) {
			t.Errorf("topic %q: got %v", topic, err)
		}
	}
	err := herald.Register[OrderShipped](r, "ok", herald.WithKey(func(o OrderPlaced) string { return o.ID }))
	if err == nil {
		t.Fatal("WithKey for another type was accepted")
	}
}

func TestWithKeyOverridesMethod(t *testing.T) {
	r := newRegistry(t, nil)
	herald.MustRegister[OrderPlaced](r, "orders", herald.WithKey(func(o OrderPlaced) string { return "k-" + o.ID }))
	et, _ := r.Lookup(reflect.TypeFor[OrderPlaced]())
	if got := et.Key(&OrderPlaced{ID: "1"}); got != "k-1" {
		t.Fatalf("got %q", got)
	}
}

func TestRegistryConcurrentUse(t *testing.T) {
	r := newRegistry(t, herald.SnakeCaseTopics)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				if _, err := r.Lookup(reflect.TypeFor[OrderShipped]()); err != nil {
					t.Error(err)
				}
				_ = herald.Register[OrderPlaced](r, "orders")
				_, _ = r.ByName(fmt.Sprint(i, j))
			}
		})
	}
	wg.Wait()
}

// registryOf is a Publisher seen as the registry holder Register takes and
// the registry it looks types up in.
type registryOf struct{ *herald.Publisher }

func (r registryOf) Lookup(t reflect.Type) (*herald.EventType, error) { return r.Registry().Lookup(t) }

func (r registryOf) ByName(name string) (*herald.EventType, bool) { return r.Registry().ByName(name) }

// newRegistry returns the registry of a new Publisher with naming (nil: none).
func newRegistry(t testing.TB, naming herald.NamingStrategy) registryOf {
	t.Helper()
	var opts []herald.PublisherOption
	if naming != nil {
		opts = append(opts, herald.WithNamingStrategy(naming))
	}
	p, err := herald.NewPublisher(discardWriter{}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return registryOf{p}
}

// ValidateName gives each bad name its reason; every allowed byte passes.
func TestValidateNameReasons(t *testing.T) {
	for name, reason := range map[string]string{
		"":                       "empty",
		strings.Repeat("a", 201): "longer than 200 bytes",
		"caf\xe9":                "not valid UTF-8",
		"café":                   "only letters",
		"a b":                    "only letters",
		"..":                     "reserved",
	} {
		err := herald.ValidateName("topic", name)
		var ne *herald.NameError
		if !errors.As(err, &ne) || !strings.Contains(ne.Reason, reason) {
			t.Errorf("%q: %v, want the reason %q", name, err, reason)
		}
	}
	if err := herald.ValidateName("topic", "AZaz09.-_:/"+strings.Repeat("x", 189)); err != nil {
		t.Errorf("every allowed byte, 200 bytes: %v", err)
	}
}
