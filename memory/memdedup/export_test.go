package memdedup

// LiveClaims returns the number of claims the stripes hold, expired or not.
func (s *Storage) LiveClaims() int {
	n := 0
	for i := range s.stripes {
		st := &s.stripes[i]
		st.mu.Lock()
		n += len(st.claims)
		st.mu.Unlock()
	}
	return n
}
