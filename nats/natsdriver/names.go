package natsdriver

import "strings"

// Token maps a herald topic or group name onto what NATS stream names,
// consumer names and subject tokens allow: letters, digits, '-' and '_'
// stay, and each of '.', ':' and '/' becomes '_'. So "orders.placed" and
// "orders_placed" map to one token; the driver records the herald name in
// the description of each stream and consumer it creates and refuses, with
// herald.ErrInvalidName, a name whose token is taken by another one.
func Token(name string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ':', '/':
			return '_'
		}
		return r
	}, name)
}

// validToken reports whether s is letters, digits, '-' and '_' only.
func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validSubject reports whether s is a literal subject: non-empty tokens
// separated by '.', without wildcards, spaces or control characters.
func validSubject(s string) bool {
	if s == "" {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c <= ' ' || c == 0x7f {
				return false
			}
		}
	}
	return true
}

// streamDescription and consumerDescription are what the driver writes
// into the streams and consumers it creates, to tell a name's own from one
// of another name with the same token.
func streamDescription(topic string) string { return "herald topic " + topic }

func consumerDescription(topic, group string) string {
	return "herald group " + group + " on topic " + topic
}
