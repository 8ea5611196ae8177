#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunefleet_fuzz::grpc_requests(data));
