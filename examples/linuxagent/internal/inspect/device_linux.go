package inspect

import "syscall"

// oDirect bypasses the block device's page cache.
const oDirect = syscall.O_DIRECT
