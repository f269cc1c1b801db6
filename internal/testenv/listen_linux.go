package testenv

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ownsListener reports whether process pid holds the socket listening on
// TCP port of 127.0.0.1. A free port found by probing can be taken by
// another test's server before ours binds it; a readiness dial alone would
// then succeed against the wrong server.
func ownsListener(pid, port int) bool {
	inode := tcpListenInode(port)
	if inode == "" {
		return false
	}
	want := "socket:[" + inode + "]"
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name())); err == nil && l == want {
			return true
		}
	}
	return false
}

// tcpListenInode returns the inode of the IPv4 socket listening on
// 127.0.0.1:port (or any address), from /proc/net/tcp.
func tcpListenInode(port int) string {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" { // 0A: TCP_LISTEN
			continue
		}
		host, p, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(p, 16, 16)
		if err != nil || int(n) != port {
			continue
		}
		if host == "0100007F" || host == "00000000" {
			return fields[9]
		}
	}
	return ""
}
