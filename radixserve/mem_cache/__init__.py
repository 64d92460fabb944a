from radixserve.mem_cache.base_prefix_cache import BasePrefixCache
from radixserve.mem_cache.chunk_cache import ChunkCache
from radixserve.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPool
from radixserve.mem_cache.radix_cache import RadixCache


def make_prefix_cache(disable_radix_cache: bool, req_pool: ReqToTokenPool, kv_pool: TokenToKVPool) -> BasePrefixCache:
    return (ChunkCache if disable_radix_cache else RadixCache)(req_pool, kv_pool)
