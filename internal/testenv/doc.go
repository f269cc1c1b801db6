// Package testenv gives integration tests real components and takes them
// away again: loop devices over sparse images formatted by the real mkfs
// tools, real NBD servers (nbd-server, qemu-nbd, nbdkit) on loopback or Unix
// sockets, and qemu guests on the machine's libvirtd.
//
// Every resource is released by t.Cleanup, also when the test fails or
// panics. A test binary that is interrupted (SIGINT, SIGTERM) releases what
// it holds if its TestMain calls [Main]; one that is killed or times out
// leaves resources whose names carry its PID, and the next [Main] or [Sweep]
// releases them once that PID is gone.
//
// [Require] decides what happens when the machine lacks a prerequisite: the
// test is skipped with the reason on a developer's machine, and fails when
// the environment variable CI is "true", because a skipped integration test
// in CI hides a broken product. scripts/setup installs and starts everything
// the prerequisites name.
//
// Resources live under [BaseDir]; nothing outside it is formatted, mounted,
// frozen or written.
package testenv
