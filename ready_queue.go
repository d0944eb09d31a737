package herald

// readyQueue holds the deliveries whose key is free, in the order they
// became ready: a ring that grows by doubling as deliveries arrive (an
// idle subscription holds none) and never beyond MaxInFlight, since every
// delivery in it holds a slot. The scheduler's mutex guards it.
type readyQueue struct {
	items []Delivery
	head  int // index of the first
	n     int // how many
}

// push appends d.
func (q *readyQueue) push(d Delivery) {
	if q.n == len(q.items) {
		q.grow()
	}
	q.items[(q.head+q.n)%len(q.items)] = d
	q.n++
}

// pop removes and returns the first delivery; ok is false when there is
// none.
func (q *readyQueue) pop() (d Delivery, ok bool) {
	if q.n == 0 {
		return Delivery{}, false
	}
	d = q.items[q.head]
	q.items[q.head] = Delivery{}
	q.head = (q.head + 1) % len(q.items)
	q.n--
	if q.n == 0 {
		q.head = 0
	}
	return d, true
}

// drain removes and returns every delivery, in order, appended to ds.
func (q *readyQueue) drain(ds []Delivery) []Delivery {
	for {
		d, ok := q.pop()
		if !ok {
			return ds
		}
		ds = append(ds, d)
	}
}

func (q *readyQueue) grow() {
	items := make([]Delivery, max(8, 2*len(q.items)))
	for i := range q.n {
		items[i] = q.items[(q.head+i)%len(q.items)]
	}
	q.items, q.head = items, 0
}
