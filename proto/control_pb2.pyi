from proto import ca_pb2 as _ca_pb2
from proto import objects_pb2 as _objects_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateNetworkRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _objects_pb2.NetworkSpec
    def __init__(self, spec: _Optional[_Union[_objects_pb2.NetworkSpec, _Mapping]] = ...) -> None: ...

class CreateNetworkResponse(_message.Message):
    __slots__ = ("network", "warnings")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    network: _objects_pb2.Network
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network: _Optional[_Union[_objects_pb2.Network, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("network_ref",)
    NETWORK_REF_FIELD_NUMBER: _ClassVar[int]
    network_ref: str
    def __init__(self, network_ref: _Optional[str] = ...) -> None: ...

class GetNetworkResponse(_message.Message):
    __slots__ = ("network", "ipsec", "endpoints")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    IPSEC_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    network: _objects_pb2.Network
    ipsec: _containers.RepeatedCompositeFieldContainer[IpsecLink]
    endpoints: _containers.RepeatedCompositeFieldContainer[NetworkEndpoint]
    def __init__(self, network: _Optional[_Union[_objects_pb2.Network, _Mapping]] = ..., ipsec: _Optional[_Iterable[_Union[IpsecLink, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[NetworkEndpoint, _Mapping]]] = ...) -> None: ...

class NetworkEndpoint(_message.Message):
    __slots__ = ("kind", "id", "name", "node_id", "node", "address", "state")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    name: str
    node_id: str
    node: str
    address: str
    state: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., node_id: _Optional[str] = ..., node: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class IpsecLink(_message.Message):
    __slots__ = ("node", "peer", "state")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    node: str
    peer: str
    state: str
    def __init__(self, node: _Optional[str] = ..., peer: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ("name_prefixes", "labels")
    NAME_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name_prefixes: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name_prefixes: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Network]
    def __init__(self, networks: _Optional[_Iterable[_Union[_objects_pb2.Network, _Mapping]]] = ...) -> None: ...

class RemoveNetworkRequest(_message.Message):
    __slots__ = ("network_ref",)
    NETWORK_REF_FIELD_NUMBER: _ClassVar[int]
    network_ref: str
    def __init__(self, network_ref: _Optional[str] = ...) -> None: ...

class RemoveNetworkResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateServiceRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _objects_pb2.ServiceSpec
    def __init__(self, spec: _Optional[_Union[_objects_pb2.ServiceSpec, _Mapping]] = ...) -> None: ...

class CreateServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: _objects_pb2.Service
    def __init__(self, service: _Optional[_Union[_objects_pb2.Service, _Mapping]] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("service_ref",)
    SERVICE_REF_FIELD_NUMBER: _ClassVar[int]
    service_ref: str
    def __init__(self, service_ref: _Optional[str] = ...) -> None: ...

class GetServiceResponse(_message.Message):
    __slots__ = ("service", "convergence")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONVERGENCE_FIELD_NUMBER: _ClassVar[int]
    service: _objects_pb2.Service
    convergence: ServiceConvergence
    def __init__(self, service: _Optional[_Union[_objects_pb2.Service, _Mapping]] = ..., convergence: _Optional[_Union[ServiceConvergence, _Mapping]] = ...) -> None: ...

class ServiceConvergence(_message.Message):
    __slots__ = ("converged", "tasks_ready", "tasks_wanted", "hosts_programmed", "hosts_concerned", "waiting")
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    TASKS_READY_FIELD_NUMBER: _ClassVar[int]
    TASKS_WANTED_FIELD_NUMBER: _ClassVar[int]
    HOSTS_PROGRAMMED_FIELD_NUMBER: _ClassVar[int]
    HOSTS_CONCERNED_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    converged: bool
    tasks_ready: int
    tasks_wanted: int
    hosts_programmed: int
    hosts_concerned: int
    waiting: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, converged: _Optional[bool] = ..., tasks_ready: _Optional[int] = ..., tasks_wanted: _Optional[int] = ..., hosts_programmed: _Optional[int] = ..., hosts_concerned: _Optional[int] = ..., waiting: _Optional[_Iterable[str]] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("name_prefixes", "labels")
    NAME_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name_prefixes: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name_prefixes: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "running_tasks", "desired_tasks")
    class RunningTasksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DesiredTasksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    RUNNING_TASKS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_TASKS_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Service]
    running_tasks: _containers.ScalarMap[str, int]
    desired_tasks: _containers.ScalarMap[str, int]
    def __init__(self, services: _Optional[_Iterable[_Union[_objects_pb2.Service, _Mapping]]] = ..., running_tasks: _Optional[_Mapping[str, int]] = ..., desired_tasks: _Optional[_Mapping[str, int]] = ...) -> None: ...

class UpdateServiceRequest(_message.Message):
    __slots__ = ("service_ref", "version", "spec", "rollback")
    SERVICE_REF_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    service_ref: str
    version: int
    spec: _objects_pb2.ServiceSpec
    rollback: bool
    def __init__(self, service_ref: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_objects_pb2.ServiceSpec, _Mapping]] = ..., rollback: _Optional[bool] = ...) -> None: ...

class UpdateServiceResponse(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: _objects_pb2.Service
    def __init__(self, service: _Optional[_Union[_objects_pb2.Service, _Mapping]] = ...) -> None: ...

class RemoveServiceRequest(_message.Message):
    __slots__ = ("service_ref",)
    SERVICE_REF_FIELD_NUMBER: _ClassVar[int]
    service_ref: str
    def __init__(self, service_ref: _Optional[str] = ...) -> None: ...

class RemoveServiceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceLogsRequest(_message.Message):
    __slots__ = ("service_ref", "tail", "follow", "since_ms")
    SERVICE_REF_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    service_ref: str
    tail: int
    follow: bool
    since_ms: int
    def __init__(self, service_ref: _Optional[str] = ..., tail: _Optional[int] = ..., follow: _Optional[bool] = ..., since_ms: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("task_id", "task_name", "node_id", "stream", "timestamp_ms", "data")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_name: str
    node_id: str
    stream: str
    timestamp_ms: int
    data: bytes
    def __init__(self, task_id: _Optional[str] = ..., task_name: _Optional[str] = ..., node_id: _Optional[str] = ..., stream: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_ref",)
    TASK_REF_FIELD_NUMBER: _ClassVar[int]
    task_ref: str
    def __init__(self, task_ref: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _objects_pb2.Task
    def __init__(self, task: _Optional[_Union[_objects_pb2.Task, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("service_refs", "node_refs", "desired_states")
    SERVICE_REFS_FIELD_NUMBER: _ClassVar[int]
    NODE_REFS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATES_FIELD_NUMBER: _ClassVar[int]
    service_refs: _containers.RepeatedScalarFieldContainer[str]
    node_refs: _containers.RepeatedScalarFieldContainer[str]
    desired_states: _containers.RepeatedScalarFieldContainer[_objects_pb2.TaskState]
    def __init__(self, service_refs: _Optional[_Iterable[str]] = ..., node_refs: _Optional[_Iterable[str]] = ..., desired_states: _Optional[_Iterable[_Union[_objects_pb2.TaskState, str]]] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_objects_pb2.Task, _Mapping]]] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("node_ref",)
    NODE_REF_FIELD_NUMBER: _ClassVar[int]
    node_ref: str
    def __init__(self, node_ref: _Optional[str] = ...) -> None: ...

class GetNodeResponse(_message.Message):
    __slots__ = ("node", "gossip", "ipsec")
    NODE_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_FIELD_NUMBER: _ClassVar[int]
    IPSEC_FIELD_NUMBER: _ClassVar[int]
    node: _objects_pb2.Node
    gossip: _objects_pb2.GossipStatus
    ipsec: _objects_pb2.IpsecStatus
    def __init__(self, node: _Optional[_Union[_objects_pb2.Node, _Mapping]] = ..., gossip: _Optional[_Union[_objects_pb2.GossipStatus, _Mapping]] = ..., ipsec: _Optional[_Union[_objects_pb2.IpsecStatus, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("name_prefixes", "labels")
    NAME_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name_prefixes: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name_prefixes: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[_objects_pb2.Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[_objects_pb2.Node, _Mapping]]] = ...) -> None: ...

class UpdateNodeRequest(_message.Message):
    __slots__ = ("node_ref", "version", "spec")
    NODE_REF_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    node_ref: str
    version: int
    spec: _objects_pb2.NodeSpec
    def __init__(self, node_ref: _Optional[str] = ..., version: _Optional[int] = ..., spec: _Optional[_Union[_objects_pb2.NodeSpec, _Mapping]] = ...) -> None: ...

class UpdateNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: _objects_pb2.Node
    def __init__(self, node: _Optional[_Union[_objects_pb2.Node, _Mapping]] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_ref", "force")
    NODE_REF_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    node_ref: str
    force: bool
    def __init__(self, node_ref: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ManagerInfo(_message.Message):
    __slots__ = ("manager_id", "addr", "leader")
    MANAGER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    manager_id: str
    addr: str
    leader: bool
    def __init__(self, manager_id: _Optional[str] = ..., addr: _Optional[str] = ..., leader: _Optional[bool] = ...) -> None: ...

class GetClusterInfoResponse(_message.Message):
    __slots__ = ("managers", "leader_id", "etcd_revision")
    MANAGERS_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    ETCD_REVISION_FIELD_NUMBER: _ClassVar[int]
    managers: _containers.RepeatedCompositeFieldContainer[ManagerInfo]
    leader_id: str
    etcd_revision: int
    def __init__(self, managers: _Optional[_Iterable[_Union[ManagerInfo, _Mapping]]] = ..., leader_id: _Optional[str] = ..., etcd_revision: _Optional[int] = ...) -> None: ...

class GetJoinTokenRequest(_message.Message):
    __slots__ = ("role", "rotate")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ROTATE_FIELD_NUMBER: _ClassVar[int]
    role: str
    rotate: bool
    def __init__(self, role: _Optional[str] = ..., rotate: _Optional[bool] = ...) -> None: ...

class GetJoinTokenResponse(_message.Message):
    __slots__ = ("role", "token")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    role: str
    token: str
    def __init__(self, role: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class DoctorRequest(_message.Message):
    __slots__ = ("network_refs", "repair", "timeout_ms")
    NETWORK_REFS_FIELD_NUMBER: _ClassVar[int]
    REPAIR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    network_refs: _containers.RepeatedScalarFieldContainer[str]
    repair: bool
    timeout_ms: int
    def __init__(self, network_refs: _Optional[_Iterable[str]] = ..., repair: _Optional[bool] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class DoctorHost(_message.Message):
    __slots__ = ("node_id", "hostname", "answered", "error")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    answered: bool
    error: str
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., answered: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class DoctorResponse(_message.Message):
    __slots__ = ("rows", "hosts")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_objects_pb2.DriftRow]
    hosts: _containers.RepeatedCompositeFieldContainer[DoctorHost]
    def __init__(self, rows: _Optional[_Iterable[_Union[_objects_pb2.DriftRow, _Mapping]]] = ..., hosts: _Optional[_Iterable[_Union[DoctorHost, _Mapping]]] = ...) -> None: ...

class CreateUiTokenRequest(_message.Message):
    __slots__ = ("ttl_s",)
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    ttl_s: int
    def __init__(self, ttl_s: _Optional[int] = ...) -> None: ...

class CreateUiTokenResponse(_message.Message):
    __slots__ = ("url", "expires_unix", "token")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_unix: int
    token: str
    def __init__(self, url: _Optional[str] = ..., expires_unix: _Optional[int] = ..., token: _Optional[str] = ...) -> None: ...
