"""The Kafka protocol: request and response headers, and the fields spans need.

Every message is a 4-byte big-endian size, then a header, then a body.

- Request header: api_key int16, api_version int16, correlation_id int32,
  client_id (nullable int16-length string; never compact), then tagged
  fields when the request is flexible (header version 2).
- Response header: correlation_id int32, then tagged fields when the
  response is flexible, except ApiVersions responses (always header v0, so
  that a client can read the answer to a version it offered).

An API version is flexible (compact strings and arrays, tagged fields) from
the version in ``FLEXIBLE_FROM``.  Bodies read here: Produce (topics,
partitions, acks, records counted from RecordBatch v2 headers), Fetch
(topics, by name or, from v13, by topic id), their responses' error codes,
Metadata responses (topic ids to names, per-topic errors), ListOffsets and
OffsetCommit responses (per-partition errors), and the first error code of
the other APIs where it has a fixed place.

Readers take the captured prefix of a body: a field the capture did not
reach ends the reading (``complete`` False), with what was read kept.
:class:`KafkaWireError` means the bytes cannot be this API's body.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from typing import Final

__all__ = ["API_NAMES", "ERROR_NAMES", "FLEXIBLE_FROM", "FetchRequest", "KafkaWireError",
           "MetadataResponse", "ProduceRequest", "Reader", "RequestHeader", "ResponseErrors", "Short",
           "Topic", "count_records", "error_name", "is_flexible", "parse_fetch_request", "parse_fetch_response", "parse_metadata_response",
           "parse_produce_request", "parse_produce_response", "parse_request_header",
           "parse_response_errors", "response_header_flexible"]

MAX_MESSAGE: Final = 1 << 30     # brokers refuse far less (socket.request.max.bytes: 100 MiB)
MAX_ITEMS: Final = 4096          # array elements walked per array
MAX_NAME: Final = 255            # topic names are at most 249 characters
MAX_CLIENT_ID: Final = 1024

API_NAMES: Final = dict(enumerate("""
Produce Fetch ListOffsets Metadata LeaderAndIsr StopReplica UpdateMetadata ControlledShutdown
OffsetCommit OffsetFetch FindCoordinator JoinGroup Heartbeat LeaveGroup SyncGroup DescribeGroups
ListGroups SaslHandshake ApiVersions CreateTopics DeleteTopics DeleteRecords InitProducerId
OffsetForLeaderEpoch AddPartitionsToTxn AddOffsetsToTxn EndTxn WriteTxnMarkers TxnOffsetCommit
DescribeAcls CreateAcls DeleteAcls DescribeConfigs AlterConfigs AlterReplicaLogDirs DescribeLogDirs
SaslAuthenticate CreatePartitions CreateDelegationToken RenewDelegationToken ExpireDelegationToken
DescribeDelegationToken DeleteGroups ElectLeaders IncrementalAlterConfigs
AlterPartitionReassignments ListPartitionReassignments OffsetDelete DescribeClientQuotas
AlterClientQuotas DescribeUserScramCredentials AlterUserScramCredentials Vote BeginQuorumEpoch
EndQuorumEpoch DescribeQuorum AlterPartition UpdateFeatures Envelope FetchSnapshot DescribeCluster
DescribeProducers BrokerRegistration BrokerHeartbeat UnregisterBroker DescribeTransactions
ListTransactions AllocateProducerIds ConsumerGroupHeartbeat ConsumerGroupDescribe
ControllerRegistration GetTelemetrySubscriptions PushTelemetry AssignReplicasToDirs
ListConfigResources DescribeTopicPartitions ShareGroupHeartbeat ShareGroupDescribe ShareFetch
ShareAcknowledge AddRaftVoter RemoveRaftVoter UpdateRaftVoter InitializeShareGroupState
ReadShareGroupState WriteShareGroupState DeleteShareGroupState ReadShareGroupStateSummary
StreamsGroupHeartbeat StreamsGroupDescribe DescribeShareGroupOffsets AlterShareGroupOffsets
DeleteShareGroupOffsets
""".split()))
MAX_VERSION: Final = 20          # no API has reached version 20

# First flexible version of each API; absent: never flexible.  APIs from 45
# on were flexible from their first version, except those listed.
_FLEXIBLE_LISTED: Final = {
    0: 9, 1: 12, 2: 6, 3: 9, 4: 4, 5: 2, 6: 6, 7: 3, 8: 8, 9: 6, 10: 3, 11: 6, 12: 4, 13: 4, 14: 4,
    15: 5, 16: 3, 18: 3, 19: 5, 20: 4, 21: 2, 22: 2, 23: 4, 24: 3, 25: 3, 26: 3, 27: 1, 28: 3,
    29: 2, 30: 2, 31: 2, 32: 4, 33: 2, 34: 2, 35: 2, 36: 2, 37: 2, 38: 2, 39: 2, 40: 2, 41: 2,
    42: 2, 43: 2, 44: 1, 48: 1, 49: 1, 53: 1, 54: 1,
}
_NEVER_FLEXIBLE: Final = frozenset({17, 47})
FLEXIBLE_FROM: Final = {key: _FLEXIBLE_LISTED.get(key, 0) for key in API_NAMES
                        if key not in _NEVER_FLEXIBLE and (key in _FLEXIBLE_LISTED or key >= 45)}

ERROR_NAMES: Final = {-1: "UNKNOWN_SERVER_ERROR", **dict(enumerate("""
NONE OFFSET_OUT_OF_RANGE CORRUPT_MESSAGE UNKNOWN_TOPIC_OR_PARTITION INVALID_FETCH_SIZE
LEADER_NOT_AVAILABLE NOT_LEADER_OR_FOLLOWER REQUEST_TIMED_OUT BROKER_NOT_AVAILABLE
REPLICA_NOT_AVAILABLE MESSAGE_TOO_LARGE STALE_CONTROLLER_EPOCH OFFSET_METADATA_TOO_LARGE
NETWORK_EXCEPTION COORDINATOR_LOAD_IN_PROGRESS COORDINATOR_NOT_AVAILABLE NOT_COORDINATOR
INVALID_TOPIC_EXCEPTION RECORD_LIST_TOO_LARGE NOT_ENOUGH_REPLICAS NOT_ENOUGH_REPLICAS_AFTER_APPEND
INVALID_REQUIRED_ACKS ILLEGAL_GENERATION INCONSISTENT_GROUP_PROTOCOL INVALID_GROUP_ID
UNKNOWN_MEMBER_ID INVALID_SESSION_TIMEOUT REBALANCE_IN_PROGRESS INVALID_COMMIT_OFFSET_SIZE
TOPIC_AUTHORIZATION_FAILED GROUP_AUTHORIZATION_FAILED CLUSTER_AUTHORIZATION_FAILED
INVALID_TIMESTAMP UNSUPPORTED_SASL_MECHANISM ILLEGAL_SASL_STATE UNSUPPORTED_VERSION
TOPIC_ALREADY_EXISTS INVALID_PARTITIONS INVALID_REPLICATION_FACTOR INVALID_REPLICA_ASSIGNMENT
INVALID_CONFIG NOT_CONTROLLER INVALID_REQUEST UNSUPPORTED_FOR_MESSAGE_FORMAT POLICY_VIOLATION
OUT_OF_ORDER_SEQUENCE_NUMBER DUPLICATE_SEQUENCE_NUMBER INVALID_PRODUCER_EPOCH INVALID_TXN_STATE
INVALID_PRODUCER_ID_MAPPING INVALID_TRANSACTION_TIMEOUT CONCURRENT_TRANSACTIONS
TRANSACTION_COORDINATOR_FENCED TRANSACTIONAL_ID_AUTHORIZATION_FAILED SECURITY_DISABLED
OPERATION_NOT_ATTEMPTED KAFKA_STORAGE_ERROR LOG_DIR_NOT_FOUND SASL_AUTHENTICATION_FAILED
UNKNOWN_PRODUCER_ID REASSIGNMENT_IN_PROGRESS DELEGATION_TOKEN_AUTH_DISABLED
DELEGATION_TOKEN_NOT_FOUND DELEGATION_TOKEN_OWNER_MISMATCH DELEGATION_TOKEN_REQUEST_NOT_ALLOWED
DELEGATION_TOKEN_AUTHORIZATION_FAILED DELEGATION_TOKEN_EXPIRED INVALID_PRINCIPAL_TYPE
NON_EMPTY_GROUP GROUP_ID_NOT_FOUND FETCH_SESSION_ID_NOT_FOUND INVALID_FETCH_SESSION_EPOCH
LISTENER_NOT_FOUND TOPIC_DELETION_DISABLED FENCED_LEADER_EPOCH UNKNOWN_LEADER_EPOCH
UNSUPPORTED_COMPRESSION_TYPE STALE_BROKER_EPOCH OFFSET_NOT_AVAILABLE MEMBER_ID_REQUIRED
PREFERRED_LEADER_NOT_AVAILABLE GROUP_MAX_SIZE_REACHED FENCED_INSTANCE_ID
ELIGIBLE_LEADERS_NOT_AVAILABLE ELECTION_NOT_NEEDED NO_REASSIGNMENT_IN_PROGRESS
GROUP_SUBSCRIBED_TO_TOPIC INVALID_RECORD UNSTABLE_OFFSET_COMMIT THROTTLING_QUOTA_EXCEEDED
PRODUCER_FENCED RESOURCE_NOT_FOUND DUPLICATE_RESOURCE UNACCEPTABLE_CREDENTIAL
INCONSISTENT_VOTER_SET INVALID_UPDATE_VERSION FEATURE_UPDATE_FAILED
PRINCIPAL_DESERIALIZATION_FAILURE SNAPSHOT_NOT_FOUND POSITION_OUT_OF_RANGE UNKNOWN_TOPIC_ID
DUPLICATE_BROKER_REGISTRATION BROKER_ID_NOT_REGISTERED INCONSISTENT_TOPIC_ID
INCONSISTENT_CLUSTER_ID TRANSACTIONAL_ID_NOT_FOUND FETCH_SESSION_TOPIC_ID_ERROR
INELIGIBLE_REPLICA NEW_LEADER_ELECTED OFFSET_MOVED_TO_TIERED_STORAGE FENCED_MEMBER_EPOCH
UNRELEASED_INSTANCE_ID UNSUPPORTED_ASSIGNOR STALE_MEMBER_EPOCH MISMATCHED_ENDPOINT_TYPE
UNSUPPORTED_ENDPOINT_TYPE UNKNOWN_CONTROLLER_ID UNKNOWN_SUBSCRIPTION_ID TELEMETRY_TOO_LARGE
INVALID_REGISTRATION TRANSACTION_ABORTABLE
""".split()))}

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_HEADER = struct.Struct(">hhih").unpack_from


class KafkaWireError(ValueError):
    """Bytes that cannot be the Kafka message they were read as."""


class Short(Exception):
    """The capture ended before the field being read."""


def is_flexible(api_key: int, version: int) -> bool:
    first = FLEXIBLE_FROM.get(api_key)
    return first is not None and version >= first


def response_header_flexible(api_key: int, version: int) -> bool:
    return api_key != 18 and is_flexible(api_key, version)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    size: int            # the header's bytes (the body follows)


def parse_request_header(data: bytes | memoryview, pos: int = 0) -> RequestHeader | None:
    """The request header at ``pos`` (just past the 4-byte size); None if not all captured.

    Raises KafkaWireError for an API key, version or client id no client sends.
    """
    if len(data) - pos < 10:
        return None
    api_key, version, correlation_id, id_len = _HEADER(data, pos)
    if api_key not in API_NAMES or not 0 <= version <= MAX_VERSION:
        raise KafkaWireError(f"api key {api_key} version {version}")
    at = pos + 10
    client_id = None
    if id_len >= 0:
        if id_len > MAX_CLIENT_ID:
            raise KafkaWireError(f"client id length {id_len}")
        if len(data) < at + id_len:
            return None
        raw = bytes(data[at:at + id_len])
        if any(b < 0x20 or b == 0x7F for b in raw):
            raise KafkaWireError("client id with control bytes")
        client_id = raw.decode("utf-8", "replace")
        at += id_len
    elif id_len != -1:
        raise KafkaWireError(f"client id length {id_len}")
    if is_flexible(api_key, version):
        reader = Reader(data, at, True)
        try:
            reader.tagged_fields()
        except Short:
            return None
        at = reader.at
    return RequestHeader(api_key, version, correlation_id, client_id, at - pos)


class Reader:
    """Reads Kafka's primitive types from ``data[at:]``; ``flexible`` picks compact forms."""

    __slots__ = ("data", "at", "flexible", "end")

    def __init__(self, data: bytes | memoryview, at: int, flexible: bool, end: int | None = None) -> None:
        self.data = data
        self.at = at
        self.flexible = flexible
        self.end = len(data) if end is None else min(end, len(data))

    def _take(self, n: int) -> int:
        at = self.at
        if at + n > self.end:
            raise Short
        self.at = at + n
        return at

    def int8(self) -> int:
        at = self._take(1)
        value = self.data[at]
        return value - 256 if value > 127 else value

    def int16(self) -> int:
        return _I16(self.data, self._take(2))[0]

    def int32(self) -> int:
        return _I32(self.data, self._take(4))[0]

    def int64(self) -> int:
        return _I64(self.data, self._take(8))[0]

    def uuid(self) -> str:
        at = self._take(16)
        return str(uuid.UUID(bytes=bytes(self.data[at:at + 16])))

    def skip(self, n: int) -> None:
        if n < 0:
            raise KafkaWireError("negative length")
        self._take(n)

    def uvarint(self) -> int:
        value = shift = 0
        while True:
            b = self.data[self._take(1)]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise KafkaWireError("varint longer than 5 bytes")

    def string(self, limit: int = MAX_NAME) -> str | None:
        n = self.uvarint() - 1 if self.flexible else self.int16()
        if n < -1 or n > limit:
            raise KafkaWireError(f"string length {n}")
        if n == -1:
            return None
        at = self._take(n)
        return bytes(self.data[at:at + n]).decode("utf-8", "replace")

    def skip_string(self) -> None:
        n = self.uvarint() - 1 if self.flexible else self.int16()
        if n < -1:
            raise KafkaWireError(f"string length {n}")
        if n > 0:
            self._take(n)

    def bytes_length(self) -> int:
        """Nullable bytes: their length (-1 for null), the position left at their start."""
        n = self.uvarint() - 1 if self.flexible else self.int32()
        if n < -1 or n > MAX_MESSAGE:
            raise KafkaWireError(f"bytes length {n}")
        return n

    def array(self) -> int:
        """An array's element count (0 for null)."""
        n = self.uvarint() - 1 if self.flexible else self.int32()
        if n < -1 or n > MAX_MESSAGE // 4:
            raise KafkaWireError(f"array length {n}")
        return max(n, 0)

    def tagged_fields(self) -> None:
        if not self.flexible:
            return
        count = self.uvarint()
        if count > MAX_ITEMS:
            raise KafkaWireError(f"{count} tagged fields")
        for _ in range(count):
            self.uvarint()                     # tag
            size = self.uvarint()
            self._take(size)


@dataclasses.dataclass(slots=True)
class Topic:
    """A topic of a request: by name, or by id (Fetch v13+, Produce v13+)."""

    name: str | None
    topic_id: str | None
    partitions: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class ProduceRequest:
    acks: int | None = None
    transactional: bool = False
    topics: list[Topic] = dataclasses.field(default_factory=list)
    records: int | None = 0          # records counted from RecordBatch headers; None if not all seen
    complete: bool = True


def parse_produce_request(body: bytes | memoryview, version: int, at: int = 0) -> ProduceRequest:
    flexible = is_flexible(0, version)
    r = Reader(body, at, flexible)
    out = ProduceRequest()
    try:
        if version >= 3:
            out.transactional = r.string(limit=MAX_CLIENT_ID) is not None
        out.acks = r.int16()
        if out.acks not in (-1, 0, 1):
            raise KafkaWireError(f"acks {out.acks}")
        r.int32()                                  # timeout
        for _ in range(_bounded(r.array())):
            topic = Topic(None, r.uuid()) if version >= 13 else Topic(_topic_name(r), None)
            out.topics.append(topic)
            for _ in range(_bounded(r.array())):
                topic.partitions.append(r.int32())
                size = r.bytes_length()
                start = r.at
                if size > 0:
                    count = count_records(body, start, min(start + size, len(body)), start + size)
                    out.records = None if count is None or out.records is None else out.records + count
                r.skip(max(size, 0))
                r.tagged_fields()
            r.tagged_fields()
    except Short:
        out.complete = False
        out.records = None
    return out


def _bounded(n: int) -> int:
    if n > MAX_ITEMS:
        raise KafkaWireError(f"array of {n}")
    return n


def _topic_name(r: Reader) -> str:
    name = r.string()
    if not name:
        raise KafkaWireError("topic without a name")
    return name


def count_records(data: bytes | memoryview, start: int, have: int, end: int) -> int | None:
    """Records in the RecordBatch (v2) list ``data[start:end]``; None if not all headers are captured.

    A legacy message set (magic 0 or 1) counts as None too.
    """
    count = 0
    at = start
    while at < end:
        if at + 61 > have:
            return None
        batch_length = _I32(data, at + 8)[0]
        magic = data[at + 16]
        if magic != 2:
            return None
        if batch_length < 49 or at + 12 + batch_length > end:
            raise KafkaWireError("record batch length")
        records = _I32(data, at + 57)[0]
        if records < 0:
            raise KafkaWireError("record count")
        count += records
        at += 12 + batch_length
    return count


@dataclasses.dataclass(slots=True)
class FetchRequest:
    topics: list[Topic] = dataclasses.field(default_factory=list)
    complete: bool = True


def parse_fetch_request(body: bytes | memoryview, version: int, at: int = 0) -> FetchRequest:
    r = Reader(body, at, is_flexible(1, version))
    out = FetchRequest()
    try:
        if version <= 14:
            r.int32()                              # replica id
        r.int32()                                  # max wait
        r.int32()                                  # min bytes
        if version >= 3:
            r.int32()                              # max bytes
        if version >= 4:
            r.int8()                               # isolation level
        if version >= 7:
            r.int32()                              # session id
            r.int32()                              # session epoch
        for _ in range(_bounded(r.array())):
            topic = Topic(None, r.uuid()) if version >= 13 else Topic(_topic_name(r), None)
            out.topics.append(topic)
            for _ in range(_bounded(r.array())):
                topic.partitions.append(r.int32())
                if version >= 9:
                    r.int32()                      # current leader epoch
                r.int64()                          # fetch offset
                if version >= 12:
                    r.int32()                      # last fetched epoch
                if version >= 5:
                    r.int64()                      # log start offset
                r.int32()                          # partition max bytes
                r.tagged_fields()
            r.tagged_fields()
    except Short:
        out.complete = False
    return out


@dataclasses.dataclass(slots=True)
class ResponseErrors:
    """The non-zero error codes of a response, in order, as (where, code).

    ``where`` names the topic (or topic id) a per-topic or per-partition
    code belongs to, or is None for a top-level code.
    """

    errors: list[tuple[str | None, int]] = dataclasses.field(default_factory=list)
    records: int | None = None       # Fetch: records counted, None if not all captured
    complete: bool = True

    def add(self, where: str | None, code: int) -> None:
        if code and len(self.errors) < 16:
            self.errors.append((where, code))


def parse_produce_response(body: bytes | memoryview, version: int, at: int = 0) -> ResponseErrors:
    r = Reader(body, at, is_flexible(0, version))
    out = ResponseErrors()
    try:
        for _ in range(_bounded(r.array())):
            where = r.uuid() if version >= 13 else _topic_name(r)
            for _ in range(_bounded(r.array())):
                r.int32()                          # partition
                out.add(where, r.int16())
                r.int64()                          # base offset
                if version >= 2:
                    r.int64()                      # log append time
                if version >= 5:
                    r.int64()                      # log start offset
                if version >= 8:
                    for _ in range(_bounded(r.array())):
                        r.int32()
                        r.skip_string()
                        r.tagged_fields()
                    r.skip_string()                # error message
                r.tagged_fields()
            r.tagged_fields()
    except Short:
        out.complete = False
    return out


def parse_fetch_response(body: bytes | memoryview, version: int, at: int = 0) -> ResponseErrors:
    r = Reader(body, at, is_flexible(1, version))
    out = ResponseErrors(records=0)
    try:
        if version >= 1:
            r.int32()                              # throttle
        if version >= 7:
            out.add(None, r.int16())
            r.int32()                              # session id
        for _ in range(_bounded(r.array())):
            where = r.uuid() if version >= 13 else _topic_name(r)
            for _ in range(_bounded(r.array())):
                r.int32()                          # partition
                out.add(where, r.int16())
                r.int64()                          # high watermark
                if version >= 4:
                    r.int64()                      # last stable offset
                if version >= 5:
                    r.int64()                      # log start offset
                if version >= 4:
                    aborted = r.uvarint() - 1 if r.flexible else r.int32()
                    for _ in range(_bounded(max(aborted, 0))):
                        r.int64()
                        r.int64()
                        r.tagged_fields()
                if version >= 11:
                    r.int32()                      # preferred read replica
                size = r.bytes_length()
                start = r.at
                if size > 0 and out.records is not None:
                    count = count_records(body, start, min(start + size, len(body)), start + size)
                    out.records = None if count is None else out.records + count
                r.skip(max(size, 0))
                r.tagged_fields()
            r.tagged_fields()
    except Short:
        out.complete = False
        out.records = None
    return out


@dataclasses.dataclass(slots=True)
class MetadataResponse:
    topics: list[tuple[str | None, str | None, int]] = dataclasses.field(default_factory=list)
    complete: bool = True            # (name, topic id or None, error code) per topic


_NULL_UUID: Final = "00000000-0000-0000-0000-000000000000"


def parse_metadata_response(body: bytes | memoryview, version: int, at: int = 0) -> MetadataResponse:
    r = Reader(body, at, is_flexible(3, version))
    out = MetadataResponse()
    try:
        if version >= 3:
            r.int32()                              # throttle
        for _ in range(_bounded(r.array())):       # brokers
            r.int32()
            r.skip_string()                        # host
            r.int32()                              # port
            if version >= 1:
                r.skip_string()                    # rack
            r.tagged_fields()
        if version >= 2:
            r.skip_string()                        # cluster id
        if version >= 1:
            r.int32()                              # controller id
        for _ in range(_bounded(r.array())):
            code = r.int16()
            name = r.string()
            topic_id = r.uuid() if version >= 10 else None
            out.topics.append((name, None if topic_id == _NULL_UUID else topic_id, code))
            if version >= 1:
                r.int8()                           # internal
            for _ in range(_bounded(r.array())):   # partitions
                r.int16()
                r.int32()
                r.int32()                          # leader
                if version >= 7:
                    r.int32()                      # leader epoch
                for _ in range(3 if version >= 5 else 2):   # replicas, isr, offline replicas
                    r.skip(4 * _bounded(r.array()))
                r.tagged_fields()
            if version >= 8:
                r.int32()                          # topic authorized operations
            r.tagged_fields()
    except Short:
        out.complete = False
    return out


# APIs whose first error code has a fixed place: key -> version from which a
# throttle time (int32) comes before it (a large number: never).
_TOP_LEVEL_ERROR: Final = {
    10: 1, 11: 2, 12: 1, 13: 1, 14: 1, 16: 1, 17: 99, 18: 99, 22: 0, 25: 0, 26: 0, 36: 99,
    60: 0, 68: 0, 71: 0, 72: 0,
}


def parse_response_errors(api_key: int, version: int, body: bytes | memoryview,
                          at: int = 0) -> ResponseErrors | None:
    """The error codes of a response, for the APIs where they are read; None for the others."""
    if api_key == 0:
        return parse_produce_response(body, version, at)
    if api_key == 1:
        return parse_fetch_response(body, version, at)
    if api_key == 3:
        meta = parse_metadata_response(body, version, at)
        out = ResponseErrors(complete=meta.complete)
        for name, topic_id, code in meta.topics:
            out.add(name or topic_id, code)
        return out
    r = Reader(body, at, is_flexible(api_key, version))
    out = ResponseErrors()
    try:
        if api_key == 10 and version >= 4:        # FindCoordinator: per key
            r.int32()
            for _ in range(_bounded(r.array())):
                key = r.string(limit=MAX_CLIENT_ID)
                r.int32()
                r.skip_string()
                r.int32()
                out.add(key, r.int16())
                r.skip_string()
                r.tagged_fields()
            return out
        throttle_from = _TOP_LEVEL_ERROR.get(api_key)
        if throttle_from is not None:
            if version >= throttle_from:
                r.int32()
            out.add(None, r.int16())
            return out
        if api_key in (2, 8):                      # ListOffsets, OffsetCommit: per partition
            if (api_key == 2 and version >= 2) or (api_key == 8 and version >= 3):
                r.int32()
            for _ in range(_bounded(r.array())):
                where = r.uuid() if api_key == 8 and version >= 10 else _topic_name(r)
                for _ in range(_bounded(r.array())):
                    r.int32()                      # partition
                    out.add(where, r.int16())
                    if api_key == 2:
                        if version == 0:
                            r.skip(8 * _bounded(r.array()))
                        else:
                            r.int64()              # timestamp
                            r.int64()              # offset
                        if version >= 4:
                            r.int32()              # leader epoch
                    r.tagged_fields()
                r.tagged_fields()
            return out
        if api_key in (19, 20):                    # CreateTopics, DeleteTopics: per topic
            if (api_key == 19 and version >= 2) or (api_key == 20 and version >= 1):
                r.int32()
            for _ in range(_bounded(r.array())):
                name = r.string()
                if (api_key == 19 and version >= 7) or (api_key == 20 and version >= 6):
                    r.uuid()
                out.add(name, r.int16())
                return out                         # the first topic's code
            return out
    except Short:
        out.complete = False
        return out
    return None


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, str(code))
