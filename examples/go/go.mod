// The Go example client. CI builds it in GOPATH mode (`make examples`). With a module proxy,
// `go mod tidy && go run .` here is the module-mode way (untested: CI has no proxy).
module aigne.dev/hub/examples/go

go 1.19

require aigne.dev/hub/gen/go v0.0.0

replace aigne.dev/hub/gen/go => ../../gen/go
