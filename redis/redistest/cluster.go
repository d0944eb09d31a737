package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/heraldbus/herald/internal/testenv"
)

// ClusterNodeTimeout is the cluster-node-timeout of a test cluster: a
// master unreachable for that long is failed over to its replica.
const ClusterNodeTimeout = time.Second

// clusterSize is three masters with one replica each, the smallest cluster
// redis-cli builds with replicas.
const clusterSize = 6

// clusterWait bounds every wait for the cluster: its start, its failovers.
const clusterWait = time.Minute

// Cluster is a Redis Cluster of the test's own: three masters with one
// replica each, redis-server child processes on free loopback ports that
// keep nothing on disk. StartCluster stops it and removes its directory
// when the test ends. Its methods are safe for concurrent use.
type Cluster struct {
	t      testing.TB
	dir    string
	server string     // redis-server's path
	mu     sync.Mutex // nodes' processes
	nodes  []*clusterNode
}

// clusterNode is one redis-server of the cluster.
type clusterNode struct {
	addr   string
	paused bool // Cluster.mu
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process ended
	client *goredis.Client
}

// StartCluster starts a cluster and waits until every node says
// cluster_state:ok and every replica is in sync with its master. It skips
// t (fails it under CI) when redis-server or redis-cli is missing.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	server, err1 := exec.LookPath("redis-server")
	cli, err2 := exec.LookPath("redis-cli")
	if err1 != nil || err2 != nil {
		testenv.Unavailable(t, "redis-server and redis-cli are needed for a test Redis Cluster")
		return nil
	}
	c := &Cluster{t: t, dir: t.TempDir(), server: server}
	t.Cleanup(c.stop) // before the directory's removal: cleanups run last first
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	for _, port := range freePorts(t, clusterSize) {
		c.nodes = append(c.nodes, c.startNode(port))
	}
	for _, n := range c.nodes {
		c.waitAnswer(ctx, n)
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.nodes {
		args = append(args, n.addr)
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.waitHealthy(ctx, func([]*clusterNode) error { return nil })
	return c
}

// freePorts returns n loopback ports that are free together with their
// cluster bus ports (port + 10000).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	var ports []int
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		if port+10000 > 65535 {
			continue
		}
		bus, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		if err != nil {
			continue
		}
		held = append(held, bus)
		ports = append(ports, port)
	}
	return ports
}

func (c *Cluster) startNode(port int) *clusterNode {
	c.t.Helper()
	p := strconv.Itoa(port)
	cmd := exec.Command(c.server,
		"--bind", "127.0.0.1", "--port", p,
		"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(c.dir, "nodes-"+p+".conf"),
		"--cluster-node-timeout", strconv.FormatInt(ClusterNodeTimeout.Milliseconds(), 10),
		// A replica may take over however long ago it last heard its
		// master: the test kills masters on purpose.
		"--cluster-replica-validity-factor", "0",
		"--dir", c.dir, "--save", "", "--appendonly", "no", "--daemonize", "no",
		"--logfile", filepath.Join(c.dir, "redis-"+p+".log"))
	detach(cmd)
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start redis-server on port %s: %v", p, err)
	}
	n := &clusterNode{addr: "127.0.0.1:" + p, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.exited)
	}()
	n.client = goredis.NewClient(&goredis.Options{Addr: n.addr, MaxRetries: -1, DialTimeout: time.Second})
	return n
}

// waitAnswer waits until n answers PING.
func (c *Cluster) waitAnswer(ctx context.Context, n *clusterNode) {
	c.t.Helper()
	for n.client.Ping(ctx).Err() != nil {
		select {
		case <-n.exited:
			c.t.Fatalf("redis-server %s exited:\n%s", n.addr, c.logTail(n))
		case <-ctx.Done():
			c.t.Fatalf("redis-server %s did not answer:\n%s", n.addr, c.logTail(n))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitHealthy waits until every live node says cluster_state:ok, every
// live replica's link to its master is up, and more(live nodes) is nil.
func (c *Cluster) waitHealthy(ctx context.Context, more func([]*clusterNode) error) {
	c.t.Helper()
	for {
		live := c.live()
		err := healthy(ctx, live)
		if err == nil {
			err = more(live)
		}
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("Redis Cluster not healthy after %v: %v", clusterWait, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func healthy(ctx context.Context, nodes []*clusterNode) error {
	for _, n := range nodes {
		info, err := n.client.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("%s: CLUSTER INFO: %w", n.addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster state is not ok", n.addr)
		}
		repl, err := n.client.Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("%s: INFO replication: %w", n.addr, err)
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return fmt.Errorf("%s: replica not in sync with its master", n.addr)
		}
	}
	return nil
}

// live returns the nodes whose process runs.
func (c *Cluster) live() []*clusterNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var live []*clusterNode
	for _, n := range c.nodes {
		select {
		case <-n.exited:
		default:
			live = append(live, n)
		}
	}
	return live
}

// Addrs returns the addresses of the cluster's live nodes.
func (c *Cluster) Addrs() []string {
	var addrs []string
	for _, n := range c.live() {
		addrs = append(addrs, n.addr)
	}
	return addrs
}

// Client returns a ClusterClient on the cluster, configured by opts (nil
// for go-redis's defaults; its Addrs are set here), and closes it when t
// ends.
func (c *Cluster) Client(t testing.TB, opts *goredis.ClusterOptions) *goredis.ClusterClient {
	t.Helper()
	var o goredis.ClusterOptions
	if opts != nil {
		o = *opts
	}
	o.Addrs = c.Addrs()
	client := goredis.NewClusterClient(&o)
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// KillMasterOf kills (SIGKILL) the master that holds key's hash slot and
// waits until its replica has taken the slot over and the cluster is ok
// again. It returns the address of the killed master and of the new one.
func (c *Cluster) KillMasterOf(key string) (killed, promoted string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	first := c.live()[0]
	slot, err := first.client.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		c.t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	killed, err = slotMaster(ctx, first, int(slot))
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	i := slices.IndexFunc(c.nodes, func(n *clusterNode) bool { return n.addr == killed })
	c.mu.Unlock()
	if i < 0 {
		c.t.Fatalf("slot %d is held by %s, not a node of this cluster", slot, killed)
	}
	c.kill(c.nodes[i])
	c.resumeAll()
	c.waitHealthy(ctx, func(live []*clusterNode) error {
		for _, n := range live {
			owner, err := slotMaster(ctx, n, int(slot))
			if err != nil {
				return err
			}
			if owner == killed {
				return fmt.Errorf("%s still sees slot %d on the killed %s", n.addr, slot, killed)
			}
			promoted = owner
		}
		return nil
	})
	return killed, promoted
}

// PauseReplicaOf stops (SIGSTOP) the replica of the master that holds
// key's hash slot, and returns its address. The master goes on
// acknowledging writes that the replica does not read: from then on, its
// replication lags behind. KillMasterOf resumes it (SIGCONT) once the
// master is dead, so that it takes over with what it has.
func (c *Cluster) PauseReplicaOf(key string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	first := c.live()[0]
	slot, err := first.client.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		c.t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	replica, err := slotReplica(ctx, first, int(slot))
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.IndexFunc(c.nodes, func(n *clusterNode) bool { return n.addr == replica })
	if i < 0 {
		c.t.Fatalf("replica %s is not a node of this cluster", replica)
	}
	if err := pause(c.nodes[i].cmd.Process); err != nil {
		c.t.Fatalf("pause %s: %v", replica, err)
	}
	c.nodes[i].paused = true
	return replica
}

// resumeAll continues the paused nodes.
func (c *Cluster) resumeAll() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.paused {
			if err := resume(n.cmd.Process); err != nil {
				c.t.Errorf("resume %s: %v", n.addr, err)
			}
			n.paused = false
		}
	}
}

// Restart starts the killed node at addr again, on its cluster
// configuration and with no data, and waits until it has rejoined as a
// replica in sync with its master: what an operator does after a failover,
// so that the shard has a replica again.
func (c *Cluster) Restart(addr string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	c.mu.Lock()
	i := slices.IndexFunc(c.nodes, func(n *clusterNode) bool { return n.addr == addr })
	c.mu.Unlock()
	if i < 0 {
		c.t.Fatalf("no node %s in this cluster", addr)
	}
	select {
	case <-c.nodes[i].exited:
	default:
		c.t.Fatalf("node %s is running", addr)
	}
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	n := c.startNode(port)
	c.mu.Lock()
	c.nodes[i] = n
	c.mu.Unlock()
	c.waitAnswer(ctx, n)
	c.waitHealthy(ctx, func([]*clusterNode) error {
		repl, err := n.client.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(repl, "role:slave") {
			return fmt.Errorf("restarted %s is no replica yet", addr)
		}
		return nil
	})
}

// slotMaster returns the address of the master that n says holds slot.
func slotMaster(ctx context.Context, n *clusterNode, slot int) (string, error) {
	master, _, err := slotNodes(ctx, n, slot)
	return master, err
}

// slotReplica returns the address of a replica of the master that n says
// holds slot.
func slotReplica(ctx context.Context, n *clusterNode, slot int) (string, error) {
	master, replica, err := slotNodes(ctx, n, slot)
	if err == nil && replica == "" {
		err = fmt.Errorf("%s: the master %s of slot %d has no replica", n.addr, master, slot)
	}
	return replica, err
}

// slotNodes returns the addresses of the master that n says holds slot,
// and of one of its replicas ("" if none), from CLUSTER NODES.
func slotNodes(ctx context.Context, n *clusterNode, slot int) (master, replica string, err error) {
	text, err := n.client.ClusterNodes(ctx).Result()
	if err != nil {
		return "", "", fmt.Errorf("%s: CLUSTER NODES: %w", n.addr, err)
	}
	// <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
	lines := strings.Split(text, "\n")
	masterID := ""
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) < 9 || !slices.Contains(strings.Split(f[2], ","), "master") {
			continue
		}
		if holdsSlot(f[8:], slot) {
			masterID = f[0]
			master, _, _ = strings.Cut(f[1], "@")
			break
		}
	}
	if masterID == "" {
		return "", "", fmt.Errorf("%s: no master holds slot %d", n.addr, slot)
	}
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) >= 8 && f[3] == masterID && !strings.Contains(f[2], "fail") {
			replica, _, _ = strings.Cut(f[1], "@")
			break
		}
	}
	return master, replica, nil
}

// holdsSlot reports whether the slot ranges of a CLUSTER NODES line
// ("0-5460", "5461", "[...]" for migrations) include slot.
func holdsSlot(ranges []string, slot int) bool {
	for _, r := range ranges {
		lo, hi, isRange := strings.Cut(r, "-")
		if !isRange {
			hi = lo
		}
		from, err1 := strconv.Atoi(lo)
		to, err2 := strconv.Atoi(hi)
		if err1 == nil && err2 == nil && from <= slot && slot <= to {
			return true
		}
	}
	return false
}

// kill ends n with SIGKILL, by its pid, and waits for it.
func (c *Cluster) kill(n *clusterNode) {
	_ = n.cmd.Process.Kill()
	<-n.exited
	_ = n.client.Close()
}

// stop kills every node still running.
func (c *Cluster) stop() {
	for _, n := range c.live() {
		c.kill(n)
	}
}

// logTail is the end of n's log, for a failure message.
func (c *Cluster) logTail(n *clusterNode) string {
	_, port, _ := net.SplitHostPort(n.addr)
	log, _ := os.ReadFile(filepath.Join(c.dir, "redis-"+port+".log"))
	if len(log) > 4000 {
		log = log[len(log)-4000:]
	}
	return string(bytes.TrimSpace(log))
}
