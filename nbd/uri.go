package nbd

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// A Target says where an export is: the parsed form of an NBD URI
// (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md).
type Target struct {
	// Network is "tcp" or "unix"; Address is what net.Dial takes.
	Network, Address string
	// Export is the export name ("" is the server's default export).
	Export string
	// TLS is set for the nbds schemes: the connection must use STARTTLS.
	TLS bool
	// ServerName is the TLS server name (the URI's host).
	ServerName string
}

// DefaultPort is the IANA port of NBD.
const DefaultPort = "10809"

// ParseURI parses nbd://host[:port]/export, nbds://host[:port]/export,
// nbd+unix:///export?socket=PATH and nbds+unix:///export?socket=PATH.
// An IPv6 host is written in brackets.
func ParseURI(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("nbd: bad URI %q: %w", s, err)
	}
	var t Target
	export := strings.TrimPrefix(u.Path, "/")
	t.Export = export
	switch u.Scheme {
	case "nbd", "nbds":
		t.TLS = u.Scheme == "nbds"
		if u.Host == "" {
			return Target{}, fmt.Errorf("nbd: URI %q has no host", s)
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = DefaultPort
		}
		if strings.HasSuffix(u.Host, ":") {
			return Target{}, fmt.Errorf("nbd: URI %q has an empty port", s)
		}
		t.Network, t.Address, t.ServerName = "tcp", net.JoinHostPort(host, port), host
		if len(u.Query()) > 0 {
			return Target{}, fmt.Errorf("nbd: URI %q: query parameters are only for unix sockets", s)
		}
	case "nbd+unix", "nbds+unix":
		t.TLS = u.Scheme == "nbds+unix"
		if u.Host != "" {
			return Target{}, fmt.Errorf("nbd: unix URI %q must not name a host", s)
		}
		q := u.Query()
		sock := q.Get("socket")
		if sock == "" {
			return Target{}, fmt.Errorf("nbd: unix URI %q has no socket= parameter", s)
		}
		for k := range q {
			if k != "socket" && k != "tls-hostname" {
				return Target{}, fmt.Errorf("nbd: URI %q: unknown parameter %q", s, k)
			}
		}
		t.Network, t.Address = "unix", sock
		t.ServerName = q.Get("tls-hostname")
		if t.ServerName == "" {
			t.ServerName = "localhost"
		}
	default:
		return Target{}, fmt.Errorf("nbd: URI %q: unsupported scheme %q (want nbd, nbds, nbd+unix or nbds+unix)", s, u.Scheme)
	}
	if u.User != nil {
		return Target{}, fmt.Errorf("nbd: URI %q: user info is not supported", s)
	}
	if strings.ContainsRune(export, 0) || len(export) > 4096 {
		return Target{}, fmt.Errorf("nbd: URI %q: bad export name", s)
	}
	return t, nil
}

// String returns the target as a URI.
func (t Target) String() string {
	scheme := "nbd"
	if t.TLS {
		scheme = "nbds"
	}
	if t.Network == "unix" {
		return fmt.Sprintf("%s+unix:///%s?socket=%s", scheme, url.PathEscape(t.Export), url.QueryEscape(t.Address))
	}
	return fmt.Sprintf("%s://%s/%s", scheme, t.Address, url.PathEscape(t.Export))
}
