// Package agentapi is the linuxagent daemon's local HTTP API: the job
// manager that runs one backup per device at a time with progress and
// cancellation, the HTTP handler that exposes it, and the client the CLI
// and backup appliances use.
//
// The API listens on a Unix socket (default) or a loopback address and
// every request must carry the daemon's token as "Authorization: Bearer
// TOKEN"; the token lives in a root-only file next to the daemon's state.
// examples/linuxagent/openapi.yaml describes the endpoints.
package agentapi
