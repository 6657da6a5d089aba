// Server-side parsing of the API's request messages, so that a request with invalid UTF-8 in
// a string field gets INVALID_ARGUMENT naming the field (protobuf's own parser rejects such a
// message before any handler runs, which gRPC reports as INTERNAL with no message).
//
// It works through gRPC's SerializationTraits: full specializations for the request types
// with string fields, visible wherever gRPC's handlers for them are compiled (the generated
// service in generation_grpc.cc, the callback handlers in server/api). A request that cannot
// be read still "parses": the message is left empty but for a marker that RequestError
// returns, and the handler answers INVALID_ARGUMENT with it. (A failed parse cannot carry its
// own status: gRPC's callback handlers turn any into an empty UNIMPLEMENTED.) Serialization,
// and every other message type, stay gRPC's generic protobuf code.
#pragma once

#include <grpcpp/impl/codegen/proto_utils.h>

#include <string>

#include "svdq/v1/generation.pb.h"

namespace svdq::proto {

// The full name of the first string field, at any depth, whose bytes are not valid UTF-8 in
// the wire-format message `bytes` of type `type`; "" when there is none (or the bytes are not
// a well-formed message, which the typed parser then reports).
std::string FirstInvalidUtf8Field(const google::protobuf::Descriptor* type, const std::string& bytes);

// Parses `buffer` into `msg` and clears the buffer. Bytes that are not a message of this type,
// or with invalid UTF-8 in a string field, leave `msg` empty with an error marker (see
// RequestError); a valid request keeps no unknown fields. Fails only if the buffer cannot be read.
grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* msg);

// Why ParseRequest could not read `msg` ("field svdq.v1.X.y is not valid UTF-8", ...), or "".
std::string RequestError(const google::protobuf::Message& msg);

template <class T>
class CheckedRequestTraits {
 public:
  static grpc::Status Serialize(const grpc::protobuf::MessageLite& msg, grpc::ByteBuffer* bb, bool* own_buffer) {
    return grpc::GenericSerialize<grpc::ProtoBufferWriter, T>(msg, bb, own_buffer);
  }
  static grpc::Status Deserialize(grpc::ByteBuffer* buffer, grpc::protobuf::MessageLite* msg) {
    return ParseRequest(buffer, static_cast<T*>(msg));
  }
};

}  // namespace svdq::proto

namespace grpc {
template <>
class SerializationTraits<svdq::v1::GenerateRequest, void> : public svdq::proto::CheckedRequestTraits<svdq::v1::GenerateRequest> {};
template <>
class SerializationTraits<svdq::v1::TokenizeRequest, void> : public svdq::proto::CheckedRequestTraits<svdq::v1::TokenizeRequest> {};
template <>
class SerializationTraits<svdq::v1::AbortRequest, void> : public svdq::proto::CheckedRequestTraits<svdq::v1::AbortRequest> {};
}  // namespace grpc
