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
// buffers hold. Only the connection's reader waits in acquire; handlers
// release. A request bigger than the byte budget runs when it is alone.
type limiter struct {
	mu       sync.Mutex
	cond     sync.Cond
	reqs     int
	bytes    int64
	maxReqs  int
	maxBytes int64
}

func newLimiter(maxReqs int, maxBytes int64) *limiter {
	l := &limiter{maxReqs: maxReqs, maxBytes: maxBytes}
	l.cond.L = &l.mu
	return l
}

func (l *limiter) acquire(n int64) {
	l.mu.Lock()
	for l.reqs >= l.maxReqs || (l.bytes > 0 && l.bytes+n > l.maxBytes) {
		l.cond.Wait()
	}
	l.reqs++
	l.bytes += n
	l.mu.Unlock()
}

func (l *limiter) release(n int64) {
	l.mu.Lock()
	l.reqs--
	l.bytes -= n
	l.mu.Unlock()
	l.cond.Broadcast()
}
