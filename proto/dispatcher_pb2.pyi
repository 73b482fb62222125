from proto import ca_pb2 as _ca_pb2
from proto import objects_pb2 as _objects_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssignmentAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_ACTION_UPDATE: _ClassVar[AssignmentAction]
    ASSIGNMENT_ACTION_REMOVE: _ClassVar[AssignmentAction]

class AssignmentsType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENTS_TYPE_COMPLETE: _ClassVar[AssignmentsType]
    ASSIGNMENTS_TYPE_INCREMENTAL: _ClassVar[AssignmentsType]
ASSIGNMENT_ACTION_UPDATE: AssignmentAction
ASSIGNMENT_ACTION_REMOVE: AssignmentAction
ASSIGNMENTS_TYPE_COMPLETE: AssignmentsType
ASSIGNMENTS_TYPE_INCREMENTAL: AssignmentsType

class RegisterRequest(_message.Message):
    __slots__ = ("node_id", "description", "spec")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    description: _objects_pb2.NodeDescription
    spec: _objects_pb2.NodeSpec
    def __init__(self, node_id: _Optional[str] = ..., description: _Optional[_Union[_objects_pb2.NodeDescription, _Mapping]] = ..., spec: _Optional[_Union[_objects_pb2.NodeSpec, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_id", "heartbeat_period_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_period_ms: int
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_period_ms: _Optional[int] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("node_id", "description")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    description: _objects_pb2.NodeDescription
    def __init__(self, node_id: _Optional[str] = ..., description: _Optional[_Union[_objects_pb2.NodeDescription, _Mapping]] = ...) -> None: ...

class GossipPeer(_message.Message):
    __slots__ = ("node_id", "addr")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    addr: str
    def __init__(self, node_id: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class GossipConfig(_message.Message):
    __slots__ = ("meta", "keys", "seeds")
    META_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    meta: _objects_pb2.Meta
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    seeds: _containers.RepeatedCompositeFieldContainer[GossipPeer]
    def __init__(self, meta: _Optional[_Union[_objects_pb2.Meta, _Mapping]] = ..., keys: _Optional[_Iterable[bytes]] = ..., seeds: _Optional[_Iterable[_Union[GossipPeer, _Mapping]]] = ...) -> None: ...

class IpsecConfig(_message.Message):
    __slots__ = ("meta", "keys")
    META_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    meta: _objects_pb2.Meta
    keys: _containers.RepeatedCompositeFieldContainer[_objects_pb2.EncryptionKey]
    def __init__(self, meta: _Optional[_Union[_objects_pb2.Meta, _Mapping]] = ..., keys: _Optional[_Iterable[_Union[_objects_pb2.EncryptionKey, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("action", "task", "network", "service", "gossip", "node", "ipsec", "attachment")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IPSEC_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    action: AssignmentAction
    task: _objects_pb2.Task
    network: _objects_pb2.Network
    service: _objects_pb2.Service
    gossip: GossipConfig
    node: _objects_pb2.Node
    ipsec: IpsecConfig
    attachment: _objects_pb2.Attachment
    def __init__(self, action: _Optional[_Union[AssignmentAction, str]] = ..., task: _Optional[_Union[_objects_pb2.Task, _Mapping]] = ..., network: _Optional[_Union[_objects_pb2.Network, _Mapping]] = ..., service: _Optional[_Union[_objects_pb2.Service, _Mapping]] = ..., gossip: _Optional[_Union[GossipConfig, _Mapping]] = ..., node: _Optional[_Union[_objects_pb2.Node, _Mapping]] = ..., ipsec: _Optional[_Union[IpsecConfig, _Mapping]] = ..., attachment: _Optional[_Union[_objects_pb2.Attachment, _Mapping]] = ...) -> None: ...

class AssignmentsMessage(_message.Message):
    __slots__ = ("type", "changes", "applies_to", "results_in")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    APPLIES_TO_FIELD_NUMBER: _ClassVar[int]
    RESULTS_IN_FIELD_NUMBER: _ClassVar[int]
    type: AssignmentsType
    changes: _containers.RepeatedCompositeFieldContainer[Assignment]
    applies_to: int
    results_in: int
    def __init__(self, type: _Optional[_Union[AssignmentsType, str]] = ..., changes: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., applies_to: _Optional[int] = ..., results_in: _Optional[int] = ...) -> None: ...

class SessionMessage(_message.Message):
    __slots__ = ("session_id", "node_id", "heartbeat_period_ms", "managers", "assignments", "doctor")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    MANAGERS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    DOCTOR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    node_id: str
    heartbeat_period_ms: int
    managers: _containers.RepeatedScalarFieldContainer[str]
    assignments: AssignmentsMessage
    doctor: DoctorCheck
    def __init__(self, session_id: _Optional[str] = ..., node_id: _Optional[str] = ..., heartbeat_period_ms: _Optional[int] = ..., managers: _Optional[_Iterable[str]] = ..., assignments: _Optional[_Union[AssignmentsMessage, _Mapping]] = ..., doctor: _Optional[_Union[DoctorCheck, _Mapping]] = ...) -> None: ...

class DoctorCheck(_message.Message):
    __slots__ = ("request_id", "network_ids", "repair")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_IDS_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    network_ids: _containers.RepeatedScalarFieldContainer[str]
    repair: bool
    def __init__(self, request_id: _Optional[str] = ..., network_ids: _Optional[_Iterable[str]] = ..., repair: _Optional[bool] = ...) -> None: ...

class ReportDoctorRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "request_id", "rows", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    request_id: str
    rows: _containers.RepeatedCompositeFieldContainer[_objects_pb2.DriftRow]
    error: str
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[_objects_pb2.DriftRow, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ReportDoctorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "gossip", "ipsec", "listening", "programmed")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    IPSEC_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    PROGRAMMED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    gossip: _objects_pb2.GossipStatus
    ipsec: _objects_pb2.IpsecStatus
    listening: _objects_pb2.ListeningPorts
    programmed: _objects_pb2.ProgrammedView
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., gossip: _Optional[_Union[_objects_pb2.GossipStatus, _Mapping]] = ..., ipsec: _Optional[_Union[_objects_pb2.IpsecStatus, _Mapping]] = ..., listening: _Optional[_Union[_objects_pb2.ListeningPorts, _Mapping]] = ..., programmed: _Optional[_Union[_objects_pb2.ProgrammedView, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("period_ms",)
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    period_ms: int
    def __init__(self, period_ms: _Optional[int] = ...) -> None: ...

class TaskStatusUpdate(_message.Message):
    __slots__ = ("task_id", "status")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: _objects_pb2.TaskStatus
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[_objects_pb2.TaskStatus, _Mapping]] = ...) -> None: ...

class UpdateTaskStatusRequest(_message.Message):
    __slots__ = ("node_id", "session_id", "updates")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    updates: _containers.RepeatedCompositeFieldContainer[TaskStatusUpdate]
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., updates: _Optional[_Iterable[_Union[TaskStatusUpdate, _Mapping]]] = ...) -> None: ...

class UpdateTaskStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PublishLogsMessage(_message.Message):
    __slots__ = ("node_id", "session_id", "task_id", "stream", "timestamp_ms", "data")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_id: str
    task_id: str
    stream: str
    timestamp_ms: int
    data: bytes
    def __init__(self, node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., stream: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishLogsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("node_id", "network", "container_id", "ifname", "netns", "name", "aliases")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    network: str
    container_id: str
    ifname: str
    netns: str
    name: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., network: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ..., name: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("attachment", "network")
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    attachment: _objects_pb2.Attachment
    network: _objects_pb2.Network
    def __init__(self, attachment: _Optional[_Union[_objects_pb2.Attachment, _Mapping]] = ..., network: _Optional[_Union[_objects_pb2.Network, _Mapping]] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("node_id", "attachment_id", "container_id", "ifname")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    attachment_id: str
    container_id: str
    ifname: str
    def __init__(self, node_id: _Optional[str] = ..., attachment_id: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...
