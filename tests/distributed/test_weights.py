"""Weights as byte buffers: any dtype round-trips exactly, buckets respect their size, digests tell weights apart."""

import torch

from mirrorl.distributed.weights import bucket_sizes, digest, pack, unpack


def test_pack_unpack_round_trips_every_dtype_and_shape_exactly():
    state = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.tensor(3, dtype=torch.int64),
             "d": torch.randn(2, 2, 2).to(torch.float16), "e": torch.zeros(0)}
    slots, buckets = pack(state, bucket_bytes=64)
    back = unpack(slots, buckets)
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor)


def test_buckets_hold_at_most_their_size_unless_one_tensor_is_larger():
    state = {f"w{i}": torch.ones(8) for i in range(5)}  # 32 bytes each
    slots, buckets = pack(state, bucket_bytes=64)
    assert [len(b) for b in buckets] == [64, 64, 32]
    slots, buckets = pack({"big": torch.ones(100), "small": torch.ones(1)}, bucket_bytes=64)
    assert [len(b) for b in buckets] == [400, 4]


def test_digest_changes_with_any_value_or_name():
    state = {"a": torch.arange(6.0), "b": torch.ones(2)}
    changed = {"a": torch.arange(6.0), "b": torch.tensor([1.0, 1.0 + 2**-20])}
    renamed = {"a": torch.arange(6.0), "c": torch.ones(2)}
    assert digest(state) == digest({k: v.clone() for k, v in state.items()})
    assert len({digest(state), digest(changed), digest(renamed)}) == 3
    assert digest(unpack(*pack(state, 1 << 20))) == digest(state)


def test_a_receiver_rebuilds_the_buffers_from_the_layout_alone():
    """What a broadcast receiver does: allocate `bucket_sizes(slots)` bytes, receive, unpack torch buffers."""
    state = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.ones(20)}
    slots, buckets = pack(state, bucket_bytes=64)
    assert bucket_sizes(slots) == [len(b) for b in buckets]
    received = [torch.empty(size, dtype=torch.uint8) for size in bucket_sizes(slots)]
    for into, sent in zip(received, buckets):
        into.copy_(torch.from_numpy(sent))
    assert digest(unpack(slots, received)) == digest(state)
