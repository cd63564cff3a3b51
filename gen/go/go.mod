// The generated Go messages and gRPC stubs of aigne.hub.v1 (`make gen`; never edited by hand).
//
// CI builds them in GOPATH mode against Debian bookworm's packages (grpc 1.33, protobuf 1.28,
// genproto 2020), the oldest versions they are known to work with; no Go module could be
// downloaded there, so no versions are required here: in your module, point a replace directive
// at this directory and let `go mod tidy` pick current google.golang.org/grpc, protobuf and
// genproto modules.
module aigne.dev/hub/gen/go

go 1.19
