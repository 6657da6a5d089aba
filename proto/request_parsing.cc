#include "proto/request_parsing.h"

#include <google/protobuf/stubs/common.h>
#include <google/protobuf/unknown_field_set.h>

namespace svdq::proto {
namespace {

constexpr int kErrorField = 536870911;  // the largest field number: ours, never the API's

void MarkInvalid(google::protobuf::Message* msg, const std::string& error) {
  msg->Clear();
  msg->GetReflection()->MutableUnknownFields(msg)->AddLengthDelimited(kErrorField, error);
}

}  // namespace

std::string FirstInvalidUtf8Field(const google::protobuf::Descriptor* type, const std::string& bytes) {
  // Read as unknown fields: the wire format alone, with no UTF-8 check, then walk the
  // length-delimited ones along the descriptor.
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) return "";
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& f = fields.field(i);
    if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const google::protobuf::FieldDescriptor* fd = type->FindFieldByNumber(f.number());
    if (!fd) continue;
    if (fd->type() == google::protobuf::FieldDescriptor::TYPE_STRING &&
        !google::protobuf::internal::IsStructurallyValidUTF8(f.length_delimited().data(),
                                                             static_cast<int>(f.length_delimited().size())))
      return fd->full_name();
    if (fd->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) {
      std::string inner = FirstInvalidUtf8Field(fd->message_type(), f.length_delimited());
      if (!inner.empty()) return inner;
    }
  }
  return "";
}

grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* msg) {
  grpc::Slice slice;
  grpc::Status st = buffer->DumpToSingleSlice(&slice);
  buffer->Clear();
  if (!st.ok()) return st;
  const std::string bytes(reinterpret_cast<const char*>(slice.begin()), slice.size());
  // Checked first, so that the typed parser never sees (nor logs) invalid UTF-8.
  const std::string bad = FirstInvalidUtf8Field(msg->GetDescriptor(), bytes);
  if (!bad.empty()) {
    MarkInvalid(msg, "field " + bad + " is not valid UTF-8");
  } else if (!msg->ParseFromString(bytes)) {
    MarkInvalid(msg, "the request is not a well-formed " + msg->GetDescriptor()->full_name() + " message");
  } else {
    msg->GetReflection()->MutableUnknownFields(msg)->Clear();  // nobody else sets the marker
  }
  return grpc::Status::OK;
}

std::string RequestError(const google::protobuf::Message& msg) {
  const google::protobuf::UnknownFieldSet& u = msg.GetReflection()->GetUnknownFields(msg);
  for (int i = 0; i < u.field_count(); ++i)
    if (u.field(i).number() == kErrorField && u.field(i).type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED)
      return u.field(i).length_delimited();
  return "";
}

}  // namespace svdq::proto
