// Package keyhash is the one key-to-partition hash of herald's
// partitioned drivers (memory, Kafka, SQL): Kafka's murmur2, so a keyed
// message lands on the same partition number whichever of them carries
// it, and producers in other languages using the Java client's default
// partitioner agree.
package keyhash

// Partition returns the partition of a non-empty key on a topic with n
// partitions: murmur2 of the key's bytes, made positive, modulo n (0 when
// n is 0 or less). It allocates nothing.
func Partition(key string, n int) int {
	if n <= 0 {
		return 0
	}
	return int((murmur2(key) & 0x7fffffff) % uint32(n))
}

// murmur2 is the 32-bit MurmurHash2 variant of Kafka's
// org.apache.kafka.common.utils.Utils.murmur2 (seed 0x9747b28c).
func murmur2(key string) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	n := len(key)
	h := seed ^ uint32(n)
	i := 0
	for ; i+4 <= n; i += 4 {
		k := uint32(key[i]) | uint32(key[i+1])<<8 | uint32(key[i+2])<<16 | uint32(key[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch n - i {
	case 3:
		h ^= uint32(key[i+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(key[i+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(key[i])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
