// The Go example client. CI builds it in GOPATH mode (`make build/examples/go-client`); with
// a module proxy at hand, `go mod tidy && go run .` here works too.
module aigne.dev/hub/examples/go

go 1.19

require aigne.dev/hub/gen/go v0.0.0

replace aigne.dev/hub/gen/go => ../../gen/go
