// Command sleepstretch measures how long time.Sleep(1ms) lasts in 64
// goroutines of a process that does nothing else, and beside goroutines
// that make go-redis round trips (PING in a loop): the Redis handler
// rows of the bench compare herald with bare sleepers, and this shows
// what the network traffic alone does to the sleeps, without herald.
//
//	cd bench && go run ./cmd/sleepstretch -pingers 0,1,2,4,8
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald/internal/testenv"
)

func main() {
	addr := flag.String("redis", testenv.Getenv("HERALD_REDIS_ADDR", testenv.DefaultRedisAddr), "Redis address")
	pingers := flag.String("pingers", "0,1,2,4,8", "goroutines pinging Redis in a loop beside the sleepers, one run per value")
	sleepers := flag.Int("sleepers", 64, "goroutines sleeping 1 ms in a loop")
	rounds := flag.Int("n", 300, "sleeps per sleeper")
	flag.Parse()
	client := goredis.NewClient(&goredis.Options{Addr: *addr})
	defer client.Close()
	if err := client.Ping(context.Background()).Err(); err != nil {
		fmt.Fprintln(os.Stderr, "sleepstretch:", err)
		os.Exit(1)
	}
	for _, f := range strings.Split(*pingers, ",") {
		p, err := strconv.Atoi(f)
		if err != nil || p < 0 {
			fmt.Fprintf(os.Stderr, "sleepstretch: -pingers: %q is not a count\n", f)
			os.Exit(2)
		}
		mean, pings := measure(client, p, *sleepers, *rounds)
		fmt.Printf("pingers %d: mean sleep %v (%d sleepers, %d round trips)\n", p, mean.Round(time.Microsecond), *sleepers, pings)
	}
}

// measure runs sleepers goroutines sleeping 1 ms rounds times each, beside
// pingers goroutines making round trips until they are done, and returns
// the mean sleep and the number of round trips.
func measure(client *goredis.Client, pingers, sleepers, rounds int) (time.Duration, int64) {
	stop := make(chan struct{})
	var pings atomic.Int64
	var bg sync.WaitGroup
	for range pingers {
		bg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if client.Ping(context.Background()).Err() == nil {
					pings.Add(1)
				}
			}
		})
	}
	var total atomic.Int64
	var wg sync.WaitGroup
	for range sleepers {
		wg.Go(func() {
			for range rounds {
				start := time.Now()
				time.Sleep(time.Millisecond)
				total.Add(int64(time.Since(start)))
			}
		})
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	return time.Duration(total.Load() / int64(sleepers*rounds)), pings.Load()
}
