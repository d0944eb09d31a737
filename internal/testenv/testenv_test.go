package testenv

import "testing"

func TestCI(t *testing.T) {
	for v, want := range map[string]bool{
		"": false, "false": false, "0": false, "FALSE": false, " ": false,
		"true": true, "1": true, "TRUE": true, "yes": true, "gitlab": true,
	} {
		t.Setenv("CI", v)
		if got := CI(); got != want {
			t.Errorf("CI=%q: CI() = %v, want %v", v, got, want)
		}
	}
}

func TestURLHost(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":              "127.0.0.1:4222",
		"nats://a:1,nats://b:2":              "a:1",
		"nats://h":                           "h:4222",
		"amqp://guest:secret@rabbit:5673/vh": "rabbit:5673",
		"amqps://u:p@[::1]/":                 "[::1]:4222",
		"127.0.0.1:4222":                     "127.0.0.1:4222",
	} {
		if got := urlHost(in, "4222"); got != want {
			t.Errorf("urlHost(%q) = %q, want %q", in, got, want)
		}
	}
}
