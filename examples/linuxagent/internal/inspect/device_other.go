//go:build !linux

package inspect

// oDirect is Linux's; elsewhere inspect reads image files only.
const oDirect = 0
