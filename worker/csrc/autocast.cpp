// C entry points to libtorch's autocast state, which tch does not expose: tch can switch
// autocast on but cannot choose its dtype. Each function acts on the calling thread's state,
// as autocast in libtorch is thread-local.

#include <ATen/autocast_mode.h>

namespace {

// Maps the Rust side's device code (0 = CPU, 1 = CUDA) to libtorch's device type.
c10::DeviceType device_type(int device) {
  return device == 1 ? c10::DeviceType::CUDA : c10::DeviceType::CPU;
}

}  // namespace

extern "C" {

bool tunefleet_autocast_is_enabled(int device) {
  return at::autocast::is_autocast_enabled(device_type(device));
}

void tunefleet_autocast_set_enabled(int device, bool enabled) {
  at::autocast::set_autocast_enabled(device_type(device), enabled);
}

bool tunefleet_autocast_is_bf16(int device) {
  return at::autocast::get_autocast_dtype(device_type(device)) == at::kBFloat16;
}

// Returns the previous dtype as an at::ScalarType code, so that it can be restored.
int tunefleet_autocast_set_bf16(int device) {
  auto type = device_type(device);
  auto previous = at::autocast::get_autocast_dtype(type);
  at::autocast::set_autocast_dtype(type, at::kBFloat16);
  return static_cast<int>(previous);
}

void tunefleet_autocast_restore_dtype(int device, int dtype) {
  at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(dtype));
}

int tunefleet_autocast_increment_nesting() {
  return at::autocast::increment_nesting();
}

// Clears the cache of cast weights when the outermost autocast region ends, as
// torch.autocast does on exit.
void tunefleet_autocast_decrement_nesting() {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
}

}  // extern "C"
