package tracer

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestRawCallsOnAPipe(t *testing.T) {
	var in, out [2]int
	for _, p := range []*[2]int{&in, &out} {
		if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	}
	buf := make([]byte, 64)
	if _, err := rawRead(in[0], buf); err != unix.EAGAIN {
		t.Fatalf("rawRead of an empty pipe: %v, want EAGAIN", err)
	}
	if _, err := rawSpliceNonblock(in[0], out[1], 64); err != unix.EAGAIN {
		t.Fatalf("rawSpliceNonblock from an empty pipe: %v, want EAGAIN", err)
	}
	fds := []unix.PollFd{{Fd: int32(in[0]), Events: unix.POLLIN}}
	if n, err := rawPollNow(fds); err != nil || n != 0 {
		t.Fatalf("rawPollNow of an empty pipe: %d, %v", n, err)
	}
	if _, err := unix.Write(in[1], []byte("page")); err != nil {
		t.Fatal(err)
	}
	if n, err := rawPollNow(fds); err != nil || n != 1 || fds[0].Revents&unix.POLLIN == 0 {
		t.Fatalf("rawPollNow of a pipe with data: %d, %v, revents %#x", n, err, fds[0].Revents)
	}
	if n, err := rawSpliceNonblock(in[0], out[1], 64); err != nil || n != 4 {
		t.Fatalf("rawSpliceNonblock: %d, %v", n, err)
	}
	if n, err := rawRead(out[0], buf); err != nil || string(buf[:n]) != "page" {
		t.Fatalf("rawRead: %q, %v", buf[:n], err)
	}
	if _, err := rawRead(-1, buf); err != unix.EBADF {
		t.Fatalf("rawRead(-1): %v, want EBADF", err)
	}
}
