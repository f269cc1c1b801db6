package agent

import "syscall"

// oDirect bypasses the page cache on reads of a block device.
const oDirect = syscall.O_DIRECT
