package cow

import "fmt"

// MaxNameLen is the longest volume name.
const MaxNameLen = 64

// NameRules says what a volume name may be, for error messages and help.
const NameRules = "letters, digits, '-', '_' and '.', not starting with '.', at most 64 characters"

// ValidateName checks a volume name. Names become NBD export names and
// appear in paths and URIs, so they are kept to a safe alphabet.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: the name is empty; use %s", ErrInvalidName, NameRules)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q is %d characters long; use %s", ErrInvalidName, name, len(name), NameRules)
	}
	if name[0] == '.' {
		return fmt.Errorf("%w: %q starts with '.'; use %s", ErrInvalidName, name, NameRules)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("%w: %q contains %q; use %s", ErrInvalidName, name, string(rune(c)), NameRules)
		}
	}
	return nil
}
