module github.com/stablecog/gateway/gen

// Builds offline with Debian's Go packages (golang-google-grpc-dev,
// golang-google-protobuf-dev) in GOPATH mode; see clients/go/README.md.
go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
