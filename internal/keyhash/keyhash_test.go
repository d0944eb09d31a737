package keyhash

import "testing"

// The Java client's murmur2 of these keys, from Kafka's own UtilsTest.
func TestPartitionMatchesJavaClient(t *testing.T) {
	javaMurmur2 := map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	}
	for key, hash := range javaMurmur2 {
		for _, n := range []int{1, 3, 7, 100, 1 << 20} {
			want := int(uint32(hash)&0x7fffffff) % n
			if got := Partition(key, n); got != want {
				t.Errorf("Partition(%q, %d) = %d, want %d (Java murmur2 %d)", key, n, got, want, hash)
			}
		}
	}
	if got := Partition("k", 0); got != 0 {
		t.Errorf("Partition on 0 partitions = %d, want 0", got)
	}
}
