module github.com/blockimage/blockimage

go 1.26.0

require (
	github.com/pojntfx/go-nbd v0.3.2
	github.com/stretchr/testify v1.12.1
	github.com/ulikunitz/xz v0.5.15
	golang.org/x/sys v0.49.0
	libvirt.org/go/libvirt v1.11010.0
)
