// Status messages that a front maps to its own codes: both gRPC answers RESOURCE_EXHAUSTED
// for a full queue (retry later) and for a request larger than the whole KV cache (never
// fits); HTTP tells them apart (429 and 400) by this message.
#pragma once

namespace svdq::api {

inline constexpr const char kQueueFullMessage[] = "the request queue is full; retry later";

}  // namespace svdq::api
