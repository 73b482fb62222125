from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EndpointMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_MODE_VIP: _ClassVar[EndpointMode]
    ENDPOINT_MODE_DNSRR: _ClassVar[EndpointMode]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]

class PublishMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUBLISH_MODE_INGRESS: _ClassVar[PublishMode]
    PUBLISH_MODE_HOST: _ClassVar[PublishMode]

class RestartCondition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_CONDITION_ANY: _ClassVar[RestartCondition]
    RESTART_CONDITION_ON_FAILURE: _ClassVar[RestartCondition]
    RESTART_CONDITION_NONE: _ClassVar[RestartCondition]

class UpdateFailureAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_FAILURE_ACTION_PAUSE: _ClassVar[UpdateFailureAction]
    UPDATE_FAILURE_ACTION_CONTINUE: _ClassVar[UpdateFailureAction]
    UPDATE_FAILURE_ACTION_ROLLBACK: _ClassVar[UpdateFailureAction]

class UpdateOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_ORDER_STOP_FIRST: _ClassVar[UpdateOrder]
    UPDATE_ORDER_START_FIRST: _ClassVar[UpdateOrder]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_NEW: _ClassVar[TaskState]
    TASK_STATE_PENDING: _ClassVar[TaskState]
    TASK_STATE_ASSIGNED: _ClassVar[TaskState]
    TASK_STATE_ACCEPTED: _ClassVar[TaskState]
    TASK_STATE_PREPARING: _ClassVar[TaskState]
    TASK_STATE_STARTING: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_COMPLETE: _ClassVar[TaskState]
    TASK_STATE_SHUTDOWN: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_REJECTED: _ClassVar[TaskState]
    TASK_STATE_REMOVE: _ClassVar[TaskState]
    TASK_STATE_ORPHANED: _ClassVar[TaskState]

class TaskHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_HEALTH_NONE: _ClassVar[TaskHealth]
    TASK_HEALTH_STARTING: _ClassVar[TaskHealth]
    TASK_HEALTH_HEALTHY: _ClassVar[TaskHealth]
    TASK_HEALTH_UNHEALTHY: _ClassVar[TaskHealth]

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_WORKER: _ClassVar[NodeRole]
    NODE_ROLE_MANAGER: _ClassVar[NodeRole]

class NodeAvailability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_AVAILABILITY_ACTIVE: _ClassVar[NodeAvailability]
    NODE_AVAILABILITY_PAUSE: _ClassVar[NodeAvailability]
    NODE_AVAILABILITY_DRAIN: _ClassVar[NodeAvailability]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNKNOWN: _ClassVar[NodeState]
    NODE_STATE_DOWN: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DISCONNECTED: _ClassVar[NodeState]
ENDPOINT_MODE_VIP: EndpointMode
ENDPOINT_MODE_DNSRR: EndpointMode
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
PUBLISH_MODE_INGRESS: PublishMode
PUBLISH_MODE_HOST: PublishMode
RESTART_CONDITION_ANY: RestartCondition
RESTART_CONDITION_ON_FAILURE: RestartCondition
RESTART_CONDITION_NONE: RestartCondition
UPDATE_FAILURE_ACTION_PAUSE: UpdateFailureAction
UPDATE_FAILURE_ACTION_CONTINUE: UpdateFailureAction
UPDATE_FAILURE_ACTION_ROLLBACK: UpdateFailureAction
UPDATE_ORDER_STOP_FIRST: UpdateOrder
UPDATE_ORDER_START_FIRST: UpdateOrder
TASK_STATE_NEW: TaskState
TASK_STATE_PENDING: TaskState
TASK_STATE_ASSIGNED: TaskState
TASK_STATE_ACCEPTED: TaskState
TASK_STATE_PREPARING: TaskState
TASK_STATE_STARTING: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_COMPLETE: TaskState
TASK_STATE_SHUTDOWN: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_REJECTED: TaskState
TASK_STATE_REMOVE: TaskState
TASK_STATE_ORPHANED: TaskState
TASK_HEALTH_NONE: TaskHealth
TASK_HEALTH_STARTING: TaskHealth
TASK_HEALTH_HEALTHY: TaskHealth
TASK_HEALTH_UNHEALTHY: TaskHealth
NODE_ROLE_WORKER: NodeRole
NODE_ROLE_MANAGER: NodeRole
NODE_AVAILABILITY_ACTIVE: NodeAvailability
NODE_AVAILABILITY_PAUSE: NodeAvailability
NODE_AVAILABILITY_DRAIN: NodeAvailability
NODE_STATE_UNKNOWN: NodeState
NODE_STATE_DOWN: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DISCONNECTED: NodeState

class Meta(_message.Message):
    __slots__ = ("id", "version", "created_at_ms", "updated_at_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    created_at_ms: int
    updated_at_ms: int
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class NetworkSpec(_message.Message):
    __slots__ = ("name", "labels", "subnet", "gateway", "ip_range", "internal", "attachable", "encrypted", "ingress", "options")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    ATTACHABLE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    subnet: str
    gateway: str
    ip_range: str
    internal: bool
    attachable: bool
    encrypted: bool
    ingress: bool
    options: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., ip_range: _Optional[str] = ..., internal: _Optional[bool] = ..., attachable: _Optional[bool] = ..., encrypted: _Optional[bool] = ..., ingress: _Optional[bool] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("meta", "spec", "subnet", "gateway", "vni")
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    meta: Meta
    spec: NetworkSpec
    subnet: str
    gateway: str
    vni: int
    def __init__(self, meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[NetworkSpec, _Mapping]] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., vni: _Optional[int] = ...) -> None: ...

class ReplicatedService(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: int
    def __init__(self, replicas: _Optional[int] = ...) -> None: ...

class GlobalService(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PortConfig(_message.Message):
    __slots__ = ("name", "protocol", "target_port", "published_port", "publish_mode", "published_ip")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PORT_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_MODE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_IP_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: Protocol
    target_port: int
    published_port: int
    publish_mode: PublishMode
    published_ip: str
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., target_port: _Optional[int] = ..., published_port: _Optional[int] = ..., publish_mode: _Optional[_Union[PublishMode, str]] = ..., published_ip: _Optional[str] = ...) -> None: ...

class EndpointSpec(_message.Message):
    __slots__ = ("mode", "ports")
    MODE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    mode: EndpointMode
    ports: _containers.RepeatedCompositeFieldContainer[PortConfig]
    def __init__(self, mode: _Optional[_Union[EndpointMode, str]] = ..., ports: _Optional[_Iterable[_Union[PortConfig, _Mapping]]] = ...) -> None: ...

class NetworkAttachmentConfig(_message.Message):
    __slots__ = ("target", "aliases")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    target: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("constraints", "max_replicas_per_node")
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    constraints: _containers.RepeatedScalarFieldContainer[str]
    max_replicas_per_node: int
    def __init__(self, constraints: _Optional[_Iterable[str]] = ..., max_replicas_per_node: _Optional[int] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("condition", "delay_ms", "max_attempts", "window_ms")
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    condition: RestartCondition
    delay_ms: int
    max_attempts: int
    window_ms: int
    def __init__(self, condition: _Optional[_Union[RestartCondition, str]] = ..., delay_ms: _Optional[int] = ..., max_attempts: _Optional[int] = ..., window_ms: _Optional[int] = ...) -> None: ...

class UpdateConfig(_message.Message):
    __slots__ = ("parallelism", "delay_ms", "failure_action", "monitor_ms", "max_failure_ratio", "order")
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_ACTION_FIELD_NUMBER: _ClassVar[int]
    MONITOR_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    parallelism: int
    delay_ms: int
    failure_action: UpdateFailureAction
    monitor_ms: int
    max_failure_ratio: float
    order: UpdateOrder
    def __init__(self, parallelism: _Optional[int] = ..., delay_ms: _Optional[int] = ..., failure_action: _Optional[_Union[UpdateFailureAction, str]] = ..., monitor_ms: _Optional[int] = ..., max_failure_ratio: _Optional[float] = ..., order: _Optional[_Union[UpdateOrder, str]] = ...) -> None: ...

class UpdateStatus(_message.Message):
    __slots__ = ("state", "started_at_ms", "completed_at_ms", "message")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[UpdateStatus.State]
        UPDATING: _ClassVar[UpdateStatus.State]
        PAUSED: _ClassVar[UpdateStatus.State]
        COMPLETED: _ClassVar[UpdateStatus.State]
        ROLLBACK_STARTED: _ClassVar[UpdateStatus.State]
        ROLLBACK_PAUSED: _ClassVar[UpdateStatus.State]
        ROLLBACK_COMPLETED: _ClassVar[UpdateStatus.State]
    UNKNOWN: UpdateStatus.State
    UPDATING: UpdateStatus.State
    PAUSED: UpdateStatus.State
    COMPLETED: UpdateStatus.State
    ROLLBACK_STARTED: UpdateStatus.State
    ROLLBACK_PAUSED: UpdateStatus.State
    ROLLBACK_COMPLETED: UpdateStatus.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: UpdateStatus.State
    started_at_ms: int
    completed_at_ms: int
    message: str
    def __init__(self, state: _Optional[_Union[UpdateStatus.State, str]] = ..., started_at_ms: _Optional[int] = ..., completed_at_ms: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("command", "tcp_port", "interval_ms", "timeout_ms", "retries", "start_period_ms")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    TCP_PORT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    START_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    tcp_port: int
    interval_ms: int
    timeout_ms: int
    retries: int
    start_period_ms: int
    def __init__(self, command: _Optional[_Iterable[str]] = ..., tcp_port: _Optional[int] = ..., interval_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., retries: _Optional[int] = ..., start_period_ms: _Optional[int] = ...) -> None: ...

class ServiceSpec(_message.Message):
    __slots__ = ("name", "labels", "command", "env", "workdir", "networks", "replicated", "endpoint", "placement", "restart_policy", "update_config", "health_check", "image", "standalone", "stop_grace_period_ms", "rollback_config")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    REPLICATED_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STANDALONE_FIELD_NUMBER: _ClassVar[int]
    STOP_GRACE_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    networks: _containers.RepeatedCompositeFieldContainer[NetworkAttachmentConfig]
    replicated: ReplicatedService
    endpoint: EndpointSpec
    placement: Placement
    restart_policy: RestartPolicy
    update_config: UpdateConfig
    health_check: HealthCheck
    image: str
    standalone: Standalone
    stop_grace_period_ms: int
    rollback_config: UpdateConfig
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., networks: _Optional[_Iterable[_Union[NetworkAttachmentConfig, _Mapping]]] = ..., replicated: _Optional[_Union[ReplicatedService, _Mapping]] = ..., endpoint: _Optional[_Union[EndpointSpec, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ..., restart_policy: _Optional[_Union[RestartPolicy, _Mapping]] = ..., update_config: _Optional[_Union[UpdateConfig, _Mapping]] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., image: _Optional[str] = ..., standalone: _Optional[_Union[Standalone, _Mapping]] = ..., stop_grace_period_ms: _Optional[int] = ..., rollback_config: _Optional[_Union[UpdateConfig, _Mapping]] = ..., **kwargs) -> None: ...

class Standalone(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class VirtualIP(_message.Message):
    __slots__ = ("network_id", "addr")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    addr: str
    def __init__(self, network_id: _Optional[str] = ..., addr: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("spec", "ports", "virtual_ips")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_IPS_FIELD_NUMBER: _ClassVar[int]
    spec: EndpointSpec
    ports: _containers.RepeatedCompositeFieldContainer[PortConfig]
    virtual_ips: _containers.RepeatedCompositeFieldContainer[VirtualIP]
    def __init__(self, spec: _Optional[_Union[EndpointSpec, _Mapping]] = ..., ports: _Optional[_Iterable[_Union[PortConfig, _Mapping]]] = ..., virtual_ips: _Optional[_Iterable[_Union[VirtualIP, _Mapping]]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("meta", "spec", "endpoint", "spec_version", "previous_spec", "previous_spec_version", "highest_spec_version", "update_status")
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SPEC_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: Meta
    spec: ServiceSpec
    endpoint: Endpoint
    spec_version: int
    previous_spec: ServiceSpec
    previous_spec_version: int
    highest_spec_version: int
    update_status: UpdateStatus
    def __init__(self, meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[ServiceSpec, _Mapping]] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., spec_version: _Optional[int] = ..., previous_spec: _Optional[_Union[ServiceSpec, _Mapping]] = ..., previous_spec_version: _Optional[int] = ..., highest_spec_version: _Optional[int] = ..., update_status: _Optional[_Union[UpdateStatus, _Mapping]] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("state", "timestamp_ms", "message", "err", "exit_code", "pid", "health", "ready_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    READY_MS_FIELD_NUMBER: _ClassVar[int]
    state: TaskState
    timestamp_ms: int
    message: str
    err: str
    exit_code: int
    pid: int
    health: TaskHealth
    ready_ms: int
    def __init__(self, state: _Optional[_Union[TaskState, str]] = ..., timestamp_ms: _Optional[int] = ..., message: _Optional[str] = ..., err: _Optional[str] = ..., exit_code: _Optional[int] = ..., pid: _Optional[int] = ..., health: _Optional[_Union[TaskHealth, str]] = ..., ready_ms: _Optional[int] = ...) -> None: ...

class NetworkAttachment(_message.Message):
    __slots__ = ("network_id", "addresses", "aliases")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network_id: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("command", "env", "workdir", "health_check", "image", "stop_grace_period_ms")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STOP_GRACE_PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    health_check: HealthCheck
    image: str
    stop_grace_period_ms: int
    def __init__(self, command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., image: _Optional[str] = ..., stop_grace_period_ms: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("meta", "service_id", "service_name", "slot", "node_id", "spec", "spec_version", "desired_state", "status", "networks", "endpoint_mode", "not_before_ms")
    META_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_MODE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    meta: Meta
    service_id: str
    service_name: str
    slot: int
    node_id: str
    spec: TaskSpec
    spec_version: int
    desired_state: TaskState
    status: TaskStatus
    networks: _containers.RepeatedCompositeFieldContainer[NetworkAttachment]
    endpoint_mode: EndpointMode
    not_before_ms: int
    def __init__(self, meta: _Optional[_Union[Meta, _Mapping]] = ..., service_id: _Optional[str] = ..., service_name: _Optional[str] = ..., slot: _Optional[int] = ..., node_id: _Optional[str] = ..., spec: _Optional[_Union[TaskSpec, _Mapping]] = ..., spec_version: _Optional[int] = ..., desired_state: _Optional[_Union[TaskState, str]] = ..., status: _Optional[_Union[TaskStatus, _Mapping]] = ..., networks: _Optional[_Iterable[_Union[NetworkAttachment, _Mapping]]] = ..., endpoint_mode: _Optional[_Union[EndpointMode, str]] = ..., not_before_ms: _Optional[int] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("meta", "node_id", "container_id", "ifname", "netns", "name", "network")
    META_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IFNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    meta: Meta
    node_id: str
    container_id: str
    ifname: str
    netns: str
    name: str
    network: NetworkAttachment
    def __init__(self, meta: _Optional[_Union[Meta, _Mapping]] = ..., node_id: _Optional[str] = ..., container_id: _Optional[str] = ..., ifname: _Optional[str] = ..., netns: _Optional[str] = ..., name: _Optional[str] = ..., network: _Optional[_Union[NetworkAttachment, _Mapping]] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("labels", "role", "availability")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AVAILABILITY_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    role: NodeRole
    availability: NodeAvailability
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., role: _Optional[_Union[NodeRole, str]] = ..., availability: _Optional[_Union[NodeAvailability, str]] = ...) -> None: ...

class NodeDescription(_message.Message):
    __slots__ = ("hostname", "addr", "platform", "agent_version", "gossip_port", "unavailable")
    class UnavailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GOSSIP_PORT_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    addr: str
    platform: str
    agent_version: str
    gossip_port: int
    unavailable: _containers.ScalarMap[str, str]
    def __init__(self, hostname: _Optional[str] = ..., addr: _Optional[str] = ..., platform: _Optional[str] = ..., agent_version: _Optional[str] = ..., gossip_port: _Optional[int] = ..., unavailable: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListeningPort(_message.Message):
    __slots__ = ("protocol", "port", "holder")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    protocol: Protocol
    port: int
    holder: str
    def __init__(self, protocol: _Optional[_Union[Protocol, str]] = ..., port: _Optional[int] = ..., holder: _Optional[str] = ...) -> None: ...

class ListeningPorts(_message.Message):
    __slots__ = ("ports",)
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ports: _containers.RepeatedCompositeFieldContainer[ListeningPort]
    def __init__(self, ports: _Optional[_Iterable[_Union[ListeningPort, _Mapping]]] = ...) -> None: ...

class ProgrammedService(_message.Message):
    __slots__ = ("service_id", "task_ids")
    SERVICE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    service_id: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_id: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProgrammedView(_message.Message):
    __slots__ = ("services", "mesh")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ProgrammedService]
    mesh: bool
    def __init__(self, services: _Optional[_Iterable[_Union[ProgrammedService, _Mapping]]] = ..., mesh: _Optional[bool] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("state", "message", "last_heartbeat_ms", "since_ms")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    state: NodeState
    message: str
    last_heartbeat_ms: int
    since_ms: int
    def __init__(self, state: _Optional[_Union[NodeState, str]] = ..., message: _Optional[str] = ..., last_heartbeat_ms: _Optional[int] = ..., since_ms: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("meta", "spec", "description", "status", "attachments")
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENTS_FIELD_NUMBER: _ClassVar[int]
    meta: Meta
    spec: NodeSpec
    description: NodeDescription
    status: NodeStatus
    attachments: _containers.RepeatedCompositeFieldContainer[NetworkAttachment]
    def __init__(self, meta: _Optional[_Union[Meta, _Mapping]] = ..., spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., description: _Optional[_Union[NodeDescription, _Mapping]] = ..., status: _Optional[_Union[NodeStatus, _Mapping]] = ..., attachments: _Optional[_Iterable[_Union[NetworkAttachment, _Mapping]]] = ...) -> None: ...

class GossipMember(_message.Message):
    __slots__ = ("node_id", "addr", "state", "incarnation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    addr: str
    state: str
    incarnation: int
    def __init__(self, node_id: _Optional[str] = ..., addr: _Optional[str] = ..., state: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class GossipNetworkView(_message.Message):
    __slots__ = ("network_id", "entries", "peers")
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    network_id: str
    entries: int
    peers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, network_id: _Optional[str] = ..., entries: _Optional[int] = ..., peers: _Optional[_Iterable[str]] = ...) -> None: ...

class GossipStatus(_message.Message):
    __slots__ = ("updated_ms", "members", "networks", "last_sync_ms", "dropped", "packets_in", "packets_out", "bytes_in", "bytes_out")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_MS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_IN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_OUT_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    updated_ms: int
    members: _containers.RepeatedCompositeFieldContainer[GossipMember]
    networks: _containers.RepeatedCompositeFieldContainer[GossipNetworkView]
    last_sync_ms: int
    dropped: _containers.ScalarMap[str, int]
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int
    def __init__(self, updated_ms: _Optional[int] = ..., members: _Optional[_Iterable[_Union[GossipMember, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[GossipNetworkView, _Mapping]]] = ..., last_sync_ms: _Optional[int] = ..., dropped: _Optional[_Mapping[str, int]] = ..., packets_in: _Optional[int] = ..., packets_out: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ...) -> None: ...

class IpsecPeer(_message.Message):
    __slots__ = ("addr", "silent_since_ms")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    SILENT_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    addr: str
    silent_since_ms: int
    def __init__(self, addr: _Optional[str] = ..., silent_since_ms: _Optional[int] = ...) -> None: ...

class IpsecStatus(_message.Message):
    __slots__ = ("peers", "cleartext_dropped_in", "cleartext_blocked_out")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    CLEARTEXT_DROPPED_IN_FIELD_NUMBER: _ClassVar[int]
    CLEARTEXT_BLOCKED_OUT_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[IpsecPeer]
    cleartext_dropped_in: int
    cleartext_blocked_out: int
    def __init__(self, peers: _Optional[_Iterable[_Union[IpsecPeer, _Mapping]]] = ..., cleartext_dropped_in: _Optional[int] = ..., cleartext_blocked_out: _Optional[int] = ...) -> None: ...

class EncryptionKey(_message.Message):
    __slots__ = ("key", "lamport_time", "created_at_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAMPORT_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    lamport_time: int
    created_at_ms: int
    def __init__(self, key: _Optional[bytes] = ..., lamport_time: _Optional[int] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class Keyring(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[EncryptionKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[EncryptionKey, _Mapping]]] = ...) -> None: ...

class DriftRow(_message.Message):
    __slots__ = ("host", "network", "kind", "object", "expected", "found", "repaired")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    host: str
    network: str
    kind: str
    object: str
    expected: str
    found: str
    repaired: bool
    def __init__(self, host: _Optional[str] = ..., network: _Optional[str] = ..., kind: _Optional[str] = ..., object: _Optional[str] = ..., expected: _Optional[str] = ..., found: _Optional[str] = ..., repaired: _Optional[bool] = ...) -> None: ...
