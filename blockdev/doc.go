// Package blockdev opens block devices and image files, resolves devices
// to their mounts, and freezes filesystems for a consistent backup.
package blockdev
