// The generated gRPC service and stubs of generation.proto, compiled with the request parsing
// of request_parsing.h in scope, so that the service's handlers use it.
#include "proto/request_parsing.h"

#include "svdq/v1/generation.grpc.pb.cc"
