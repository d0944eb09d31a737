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
