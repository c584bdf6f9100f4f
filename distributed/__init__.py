"""The worker axis: collectives, runtimes, communication and time accounting."""

from distoptax.distributed.adacomm import adacomm
from distoptax.distributed.adacomm import AdaCommState
from distoptax.distributed.aggregate import aggregate
from distoptax.distributed.aggregate import AggregateState
from distoptax.distributed.aggregate import find_selected
from distoptax.distributed.bounded_delay import bounded_delay
from distoptax.distributed.bounded_delay import BoundedDelayState
from distoptax.distributed.bounded_delay import DELAY_POLICIES
from distoptax.distributed.bounded_delay import gradient_at as bounded_delay_gradient_at
from distoptax.distributed.clock import Clock
from distoptax.distributed.clock import ClockState
from distoptax.distributed.clock import Event
from distoptax.distributed.clock import Round
from distoptax.worker_axis.collectives import all_gather
from distoptax.worker_axis.collectives import NORMALIZERS
from distoptax.worker_axis.collectives import local_axis_name
from distoptax.worker_axis.collectives import num_workers
from distoptax.worker_axis.collectives import pmean
from distoptax.worker_axis.collectives import psum
from distoptax.worker_axis.collectives import reduce_scatter
from distoptax.worker_axis.collectives import worker_axes
from distoptax.worker_axis.collectives import worker_index
from distoptax.worker_axis.collectives import WORKERS
from distoptax.worker_axis.replication import replicated
from distoptax.worker_axis.replication import replicated_fields
from distoptax.worker_axis.replication import ReplicatedState
from distoptax.worker_axis.replication import replication_mask
from distoptax.distributed.comm_stats import clock_rounds
from distoptax.distributed.comm_stats import CommStats
from distoptax.distributed.comm_stats import KINDS
from distoptax.distributed.comm_stats import RoundRecord
from distoptax.distributed.communication import exchange
from distoptax.distributed.communication import Rounds
from distoptax.distributed.communication import sparse_pairs
from distoptax.distributed.communication import TRANSPORTS
from distoptax.worker_axis.keys import transform_key
from distoptax.distributed.comm_stats import find_comm_stats
from distoptax.distributed.comm_stats import total_bytes
from distoptax.distributed.comm_stats import total_coded_bytes
from distoptax.distributed.cser import block_cser
from distoptax.distributed.cser import cser
from distoptax.distributed.cser import CSERState
from distoptax.distributed.cser import FORMS as CSER_FORMS
from distoptax.distributed.cser import VARIANTS as CSER_VARIANTS
from distoptax.distributed.eager import eager_schedule
from distoptax.distributed.eager import eager_sgd
from distoptax.distributed.eager import EagerSchedule
from distoptax.distributed.eager import EagerSGDState
from distoptax.distributed.fedasync import ArrivalBatch
from distoptax.distributed.fedasync import arrival_batches
from distoptax.distributed.fedasync import clients as fedasync_clients
from distoptax.distributed.fedasync import fedasync
from distoptax.distributed.fedasync import FedAsyncState
from distoptax.distributed.fedasync import fedbuff
from distoptax.distributed.fedasync import schedule_batches
from distoptax.distributed.fedasync import STALENESS_FUNCTIONS
from distoptax.distributed.fedasync import staleness_function
from distoptax.distributed.federated import diloco
from distoptax.distributed.federated import fedadagrad
from distoptax.distributed.federated import fedadam
from distoptax.distributed.federated import fedavg
from distoptax.distributed.federated import fedprox
from distoptax.distributed.federated import fedyogi
from distoptax.distributed.federated import post_local_sgd
from distoptax.distributed.federated import slsgd
from distoptax.distributed.hierarchical import hierarchical_all_reduce
from distoptax.distributed.hierarchical import hierarchical_mean
from distoptax.distributed.hierarchical import hierarchical_psum
from distoptax.distributed.hierarchical import HierarchicalState
from distoptax.distributed.local_adaalter import local_adaalter
from distoptax.distributed.local_sgd import local_sgd
from distoptax.distributed.local_sgd import LocalSGDState
from distoptax.distributed.local_sgd import STATE_POLICIES
from distoptax.distributed.participation import client_sampling
from distoptax.distributed.participation import deadline as deadline_participation
from distoptax.distributed.participation import everyone
from distoptax.distributed.participation import find_participants
from distoptax.distributed.participation import partial_aggregate
from distoptax.distributed.participation import PartialAggregateState
from distoptax.distributed.participation import Participation
from distoptax.distributed.participation import PARTICIPATION
from distoptax.distributed.participation import scheduled
from distoptax.distributed.powersgd import powersgd
from distoptax.distributed.powersgd import PowerSGDState
from distoptax.distributed.runtime import data_parallel
from distoptax.distributed.runtime import on_mesh
from distoptax.distributed.runtime import Runtime
from distoptax.distributed.runtime import simulate
from distoptax.distributed.runtime import SyncTrainState
from distoptax.distributed.runtime import TrainState
from distoptax.distributed.runtime import worker_slice
from distoptax.distributed.runtime import WorkerStep
from distoptax.distributed.schedules import async_schedule
from distoptax.distributed.schedules import AsyncSchedule
from distoptax.distributed.schedules import deadline_schedule
from distoptax.distributed.schedules import DeadlineSchedule
from distoptax.distributed.schedules import drop_schedule
from distoptax.distributed.sparse_allreduce import sparse_all_reduce
from distoptax.distributed.sparse_allreduce import SparseSum
from distoptax.distributed.sparse_allreduce import SparseVector
from distoptax.distributed.stragglers import ComputeModel
from distoptax.distributed.stragglers import Straggler
from distoptax.distributed.system_model import ExponentialDelay
from distoptax.distributed.system_model import InjectedDelay
from distoptax.distributed.system_model import LogNormalDelay
from distoptax.distributed.system_model import make_straggler
from distoptax.distributed.system_model import NoStragglers
from distoptax.distributed.system_model import parameter_server_seconds
from distoptax.distributed.system_model import ParetoDelay
from distoptax.distributed.system_model import ring_all_gather_seconds
from distoptax.distributed.system_model import ring_all_reduce_seconds
from distoptax.distributed.system_model import StepTime
from distoptax.distributed.system_model import STRAGGLERS
from distoptax.distributed.system_model import SystemModel
from distoptax.distributed.system_model import TOPOLOGIES
from distoptax.distributed.topologies import COLLECTIVES
from distoptax.distributed.unreliable import rps
from distoptax.distributed.unreliable import RPSState
from distoptax.distributed.topologies import HierarchicalTopology
from distoptax.distributed.topologies import make_topology
from distoptax.distributed.topologies import ParameterServerTopology
from distoptax.distributed.topologies import RingTopology
from distoptax.distributed.topologies import sendrecv_seconds
from distoptax.distributed.topologies import Topology
from distoptax.distributed.topologies import TreeTopology

__all__ = [
    "AdaCommState",
    "AggregateState",
    "AsyncSchedule",
    "CSERState",
    "CSER_FORMS",
    "CSER_VARIANTS",
    "COLLECTIVES",
    "Clock",
    "ClockState",
    "CommStats",
    "ComputeModel",
    "DeadlineSchedule",
    "Event",
    "ExponentialDelay",
    "HierarchicalState",
    "HierarchicalTopology",
    "InjectedDelay",
    "KINDS",
    "LocalSGDState",
    "LogNormalDelay",
    "NORMALIZERS",
    "NoStragglers",
    "ParameterServerTopology",
    "ParetoDelay",
    "ReplicatedState",
    "PowerSGDState",
    "RingTopology",
    "Round",
    "RoundRecord",
    "Rounds",
    "Runtime",
    "STATE_POLICIES",
    "STRAGGLERS",
    "StepTime",
    "Straggler",
    "SystemModel",
    "TOPOLOGIES",
    "Topology",
    "SyncTrainState",
    "TrainState",
    "TreeTopology",
    "WORKERS",
    "WorkerStep",
    "adacomm",
    "aggregate",
    "all_gather",
    "async_schedule",
    "block_cser",
    "clock_rounds",
    "cser",
    "data_parallel",
    "deadline_schedule",
    "diloco",
    "drop_schedule",
    "exchange",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedprox",
    "fedyogi",
    "find_comm_stats",
    "find_selected",
    "hierarchical_all_reduce",
    "hierarchical_mean",
    "hierarchical_psum",
    "local_axis_name",
    "local_adaalter",
    "local_sgd",
    "make_straggler",
    "make_topology",
    "num_workers",
    "on_mesh",
    "powersgd",
    "parameter_server_seconds",
    "pmean",
    "post_local_sgd",
    "psum",
    "reduce_scatter",
    "replicated",
    "replicated_fields",
    "replication_mask",
    "ring_all_gather_seconds",
    "ring_all_reduce_seconds",
    "simulate",
    "slsgd",
    "total_bytes",
    "total_coded_bytes",
    "transform_key",
    "worker_axes",
    "worker_index",
    "worker_slice",
    "EagerSGDState",
    "EagerSchedule",
    "PARTICIPATION",
    "PartialAggregateState",
    "Participation",
    "RPSState",
    "client_sampling",
    "deadline_participation",
    "eager_schedule",
    "eager_sgd",
    "everyone",
    "find_participants",
    "partial_aggregate",
    "rps",
    "scheduled",
    "ArrivalBatch",
    "BoundedDelayState",
    "DELAY_POLICIES",
    "FedAsyncState",
    "STALENESS_FUNCTIONS",
    "arrival_batches",
    "bounded_delay",
    "bounded_delay_gradient_at",
    "fedasync",
    "fedasync_clients",
    "fedbuff",
    "schedule_batches",
    "staleness_function",
    "SparseSum",
    "SparseVector",
    "TRANSPORTS",
    "sendrecv_seconds",
    "sparse_all_reduce",
    "sparse_pairs",
]
