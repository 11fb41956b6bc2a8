package nbd

import (
	"math/bits"
	"sync"
)

// Buffers come from per-size-class pools (powers of two from 4 KiB to 1 GiB)
// so that a READ or WRITE does not allocate its data buffer.
const (
	minBufShift = 12
	maxBufShift = 30
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n uint32) int {
	shift := bits.Len32(n - 1)
	if n <= 1<<minBufShift {
		shift = minBufShift
	}
	return shift
}

// bufCost is the memory a buffer for n bytes really takes.
func bufCost(n uint32) int64 {
	if n == 0 {
		return 0
	}
	return int64(1) << bufClass(n)
}

// getBuf returns a buffer of length n (n <= 1<<maxBufShift), or nil for 0.
func getBuf(n uint32) *[]byte {
	if n == 0 {
		return nil
	}
	class := bufClass(n)
	if p, ok := bufPools[class-minBufShift].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<class)
	return &b
}

func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := cap(*p)
	class := bits.Len(uint(c)) - 1
	if c != 1<<class || class < minBufShift || class > maxBufShift {
		return
	}
	bufPools[class-minBufShift].Put(p)
}

// limiter bounds one connection's requests in flight and the bytes their
// buffers hold. Only the connection's reader acquires (tryAcquire, then
// acquire when that failed); handlers release. A request bigger than the
// byte budget runs when it is alone.
//
// Once full, acquire waits until a quarter of the request slots are free
// again, not just one: the reader flushes its replies before it waits
// (replies.go), and resuming at every freed slot cost a write(2) and a
// wakeup per request for a client that keeps more requests in flight than
// the bound (0.9 writes per request in BenchmarkRead/pipelined, 0.1 with
// the hysteresis).
type limiter struct {
	mu       sync.Mutex
	cond     sync.Cond
	reqs     int
	bytes    int64
	maxReqs  int
	resumeAt int // a waiting acquire resumes once reqs <= resumeAt
	maxBytes int64
	waiting  bool  // the reader waits in acquire ...
	waitN    int64 // ... for this many bytes
}

func newLimiter(maxReqs int, maxBytes int64) *limiter {
	l := &limiter{maxReqs: maxReqs, resumeAt: maxReqs - max(1, maxReqs/4), maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

func (l *limiter) bytesFit(n int64) bool { return l.bytes == 0 || l.bytes+n <= l.maxBytes }

// tryAcquire takes a slot and n bytes if that needs no wait.
func (l *limiter) tryAcquire(n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.reqs >= l.maxReqs || !l.bytesFit(n) {
		return false
	}
	l.reqs++
	l.bytes += n
	return true
}

// acquire takes a slot and n bytes, waiting as long as it must.
func (l *limiter) acquire(n int64) {
	l.mu.Lock()
	if l.reqs >= l.maxReqs || !l.bytesFit(n) {
		l.waiting, l.waitN = true, n
		for l.reqs > l.resumeAt || !l.bytesFit(n) {
			l.cond.Wait()
		}
		l.waiting = false
	}
	l.reqs++
	l.bytes += n
	l.mu.Unlock()
}

// alone reports whether the request the reader just acquired for is the
// only one in flight.
func (l *limiter) alone() bool { return l.only(1) }

// only says whether the n requests of the caller are all there are.
func (l *limiter) only(n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reqs == n
}

func (l *limiter) release(n int64) {
	l.mu.Lock()
	l.reqs--
	l.bytes -= n
	wake := l.waiting && l.reqs <= l.resumeAt && l.bytesFit(l.waitN)
	l.mu.Unlock()
	if wake {
		l.cond.Signal()
	}
}
