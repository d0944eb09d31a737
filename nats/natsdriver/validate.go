package natsdriver

// ValidateOptions reports every invalid option as New would, each
// wrapping herald.ErrInvalidOption, without a connection: for programs
// that check their configuration before they connect.
func ValidateOptions(opts ...Option) error { return newConfig(opts).validate() }
