// agentd process tracker: fork / exec / exit / OOM victim / cgroup attach through a ring
// buffer, and the exec gate (SIGSTOP at exec for tasks in gated v2 cgroups).
//
// Compiled by BCC against headers that do NOT match the running kernel, so this file names
// no kernel struct field: it reads tracepoint arguments through structs rendered from the
// running kernel's tracefs format files (agentd/tracking/tp_format.py: one
// `struct agentd_args_<event>`, AGENTD_HAS_<event>_<field> per field present, and
// AGENTD_STR_<event>_<field>(dst, len) per string, stored inline or as __data_loc), helpers,
// and, where BTF gives them, byte offsets into task_struct (AGENTD_TASK_*_OFF).
// Each program is attached by user space (AGENTD_ATTACH_<event> says which are).
//
// Two ring buffers: `events` for everything ordinary and `gate_events` for gated execs only,
// so that a flood of forks and exits can never take the room a stopped process needs to be
// heard (a gated exec whose record cannot be reserved is not stopped: fail open).
// Records are a 56-byte head; EXEC and CGROUP_ATTACH add a path.
//
// agentd/tracking/bpf_source.py prepends these #defines, checked, before compiling:
//   AGENTD_RINGBUF_PAGES       `events` size in pages (power of two)
//   AGENTD_GATE_RINGBUF_PAGES  `gate_events` size in pages (power of two)
//   AGENTD_HEAD_SIZE           sizeof(struct event_head) on the Python side, asserted below
//   AGENTD_EVENT_SIZE          sizeof(struct event) on the Python side, asserted below
//   AGENTD_GATE                1: exec gate on (gated_cgroups is consulted at every exec)
//   AGENTD_EXIT_CODE           the option as asked; AGENTD_EXIT_GROUP_CODES says whether it applies
//   AGENTD_WATCH_SUBTREE       1: fork/exec/exit only for tasks under the cgroup in watch_root[0]
//   AGENTD_V2_ROOT             hierarchy id of the v2 (default) hierarchy for cgroup_attach_task
//   AGENTD_WAKE_EVERY          wake the consumer every Nth ordinary event per CPU (1: every one)
//   AGENTD_TASK_EXIT_CODE_OFF  offset of task_struct.exit_code (BTF), -1: piece it together
//                              from signal tracepoints (AGENTD_SIGNAL_EXIT_CODES)
//   AGENTD_GROUP_DEAD_FIELD    1: sched_process_exit has group_dead (6.16+); else
//   AGENTD_TASK_SIGNAL_OFF / AGENTD_SIGNAL_LIVE_OFF  task->signal->live == 0 marks the last
//                              thread (BTF); both -1: the thread group leader's exit counts
//   AGENTD_SIGNAL_EXIT_CODES   1: signal_generate / signal_deliver remember fatal signals
//   AGENTD_EXIT_GROUP_CODES    1: also exit_group(2) codes (a syscall tracepoint)
//   AGENTD_PIDNS               1: the daemon runs in a child pid namespace (dev/ino below):
//                              every pid it gets is read in that namespace; tasks it cannot
//                              see there are not reported and never stopped (STAT_PIDNS_UNSEEN)
//   AGENTD_PIDNS_DEV / AGENTD_PIDNS_INO  st_dev / st_ino of the daemon's /proc/self/ns/pid
//   AGENTD_OFF_*               BTF offsets from a task to its pid in its namespace (children,
//                              sibling, task_pid, thread_pid, pid_level, pid_numbers, upid_*);
//                              -1: forks are not reported in a child pid namespace

#define AGENTD_TP(ev) int agentd__##ev(struct agentd_args_##ev *args)

#define AGENTD_FORK 1
#define AGENTD_EXEC 2
#define AGENTD_EXIT 3
#define AGENTD_OOM_VICTIM 4
#define AGENTD_CGROUP_ATTACH 5

#define AGENTD_F_GATED 1u            // exec: SIGSTOP sent, user space owes a SIGCONT
#define AGENTD_F_EXIT_CODE 2u        // exit: exit_code is valid
#define AGENTD_F_SELF_MOVE 4u        // cgroup attach: the moved process wrote itself

#define AGENTD_PATH_LEN 256
#define AGENTD_SIGSTOP 19
#define AGENTD_CLONE_THREAD 0x00010000ULL

// Stat slots of the per-CPU `stats` array, read and summed by user space.
#define STAT_LOST 0            // `events` full: an ordinary event dropped
#define STAT_GATE_SKIPPED 1    // gated exec NOT stopped: `gate_events` full (then sent as ordinary)
#define STAT_EMITTED 2
#define STAT_THREADS 3         // thread creations filtered out (CLONE_THREAD)
#define STAT_SIGNAL_FAILED 4   // bpf_send_signal returned an error
#define STAT_PIDNS_UNSEEN 5    // child pid namespace: an event whose pid the daemon cannot see
#define STAT_SLOTS 8

struct event_head {
    u64 ts_ns;
    u64 cgroup_id;     // v2 cgroup id of current; CGROUP_ATTACH: the destination cgroup id
    u32 kind;
    u32 pid;           // FORK: child tid; EXEC: pid (tgid after de_thread); EXIT: tgid;
                       // OOM_VICTIM: victim pid; CGROUP_ATTACH: the moved task
    u32 tgid;          // tgid of current (the task on whose behalf the tracepoint ran)
    u32 ppid;          // FORK: parent tgid; EXEC: old_pid; others 0
    u32 exit_code;     // EXIT: wait status ((code & 0xff) << 8 | signal), valid with F_EXIT_CODE
    u32 flags;
    char comm[16];
};

struct event {
    struct event_head h;
    char path[AGENTD_PATH_LEN];  // EXEC: filename; CGROUP_ATTACH: destination path (v2)
};

_Static_assert(sizeof(struct event_head) == AGENTD_HEAD_SIZE, "event head differs from Python");
_Static_assert(sizeof(struct event) == AGENTD_EVENT_SIZE, "event layout differs from Python");

BPF_RINGBUF_OUTPUT(events, AGENTD_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(gate_events, AGENTD_GATE_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, STAT_SLOTS);
BPF_HASH(gated_cgroups, u64, u8, 4096);
BPF_PERCPU_ARRAY(since_wake, u32, 1);
BPF_TABLE("lru_hash", u32, u64, clone_flags, 16384);
#if AGENTD_SIGNAL_EXIT_CODES
BPF_TABLE("lru_hash", u32, u32, exit_codes, 16384);
BPF_TABLE("lru_hash", u32, u32, fatal_sent, 16384);
#endif
#if AGENTD_WATCH_SUBTREE
BPF_CGROUP_ARRAY(watch_root, 1);
#endif
#if !AGENTD_GROUP_DEAD_FIELD && AGENTD_TASK_SIGNAL_OFF >= 0
// Two last threads exiting at once can both see signal->live at 0: the first to insert
// its tgid here reports the exit. A fork that reuses the pid clears the entry.
BPF_TABLE("lru_hash", u32, u8, exit_reported, 16384);
#endif

static __always_inline void stat_inc(int slot)
{
    u64 *v = stats.lookup(&slot);
    if (v)
        (*v)++;
}

static __always_inline int watched(void)
{
#if AGENTD_WATCH_SUBTREE
    // 1 = under, 0 = not under, <0 = no cgroup set yet (then everything is watched).
    return watch_root.check_current_task(0) != 0;
#else
    return 1;
#endif
}

// current's pid and tgid as the daemon sees them; -1 when it cannot see current (a task
// outside the daemon's pid namespace, or in one below it: the helper answers only for tasks
// whose own namespace is the daemon's). In the init namespace: the host ids, always.
static __always_inline int current_ids(u32 *pid, u32 *tgid)
{
#if AGENTD_PIDNS
    struct bpf_pidns_info ns = {};
    if (bpf_get_ns_current_pid_tgid(AGENTD_PIDNS_DEV, AGENTD_PIDNS_INO, &ns, sizeof(ns)) != 0) {
        *pid = 0;
        *tgid = 0;
        return -1;
    }
    *pid = ns.pid;
    *tgid = ns.tgid;
#else
    u64 id = bpf_get_current_pid_tgid();
    *pid = (u32)id;
    *tgid = id >> 32;
#endif
    return 0;
}

static __always_inline void fill(struct event_head *h, u32 kind)
{
    u32 pid, tgid;
    current_ids(&pid, &tgid);
    h->ts_ns = bpf_ktime_get_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->kind = kind;
    h->pid = 0;
    h->tgid = tgid;
    h->ppid = 0;
    h->exit_code = 0;
    h->flags = 0;
    bpf_get_current_comm(&h->comm, sizeof(h->comm));
}

static __always_inline struct event_head *reserve_head(u32 kind)
{
    struct event_head *h = events.ringbuf_reserve(sizeof(struct event_head));
    if (!h) {
        stat_inc(STAT_LOST);
        return 0;
    }
    fill(h, kind);
    return h;
}

static __always_inline struct event *reserve_full(u32 kind)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        stat_inc(STAT_LOST);
        return 0;
    }
    fill(&e->h, kind);
    e->path[0] = 0;
    return e;
}

// Waking the consumer is an irq_work (a self-IPI): measured here at 3-12 us of the traced
// task's time per event in this VM, ten times the rest of the program. A gated exec wakes it
// at once (someone is stopped); ordinary events wake it every AGENTD_WAKE_EVERY-th time on a
// CPU and otherwise wait for the consumer's poll timeout.
static __always_inline void submit(void *rec)
{
    stat_inc(STAT_EMITTED);
#if AGENTD_WAKE_EVERY > 1
    int zero = 0;
    u32 *n = since_wake.lookup(&zero);
    if (n) {
        *n += 1;
        if (*n < AGENTD_WAKE_EVERY) {
            events.ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
            return;
        }
        *n = 0;
    }
#endif
    events.ringbuf_submit(rec, 0);
}

#if AGENTD_PIDNS && AGENTD_OFF_CHILDREN >= 0
// The forked child's pid in the daemon's namespace, 0 when it cannot be had. The tracepoint
// gives only the init namespace's number, and the child is not current; but copy_process()
// has just put it at the tail of current->children (wake_up_new_task() comes after this
// tracepoint, so it cannot have exited), which the host pid check confirms. Its number is
// task->thread_pid->numbers[level].nr, in the namespace of the parent's own level.
static __always_inline u32 child_ns_pid(u32 host_pid)
{
    u64 task = bpf_get_current_task();
    u64 last = 0, child, cpid = 0, ppid = 0, cns = 0, pns = 0;
    int hostnr = 0, nr = 0;
    u32 clevel = 0, plevel = 0;
    if (bpf_probe_read_kernel(&last, sizeof(last), (void *)(task + AGENTD_OFF_CHILDREN + 8)))  // children.prev
        return 0;
    child = last - AGENTD_OFF_SIBLING;
    if (bpf_probe_read_kernel(&hostnr, sizeof(hostnr), (void *)(child + AGENTD_OFF_TASK_PID)) || (u32)hostnr != host_pid)
        return 0;  // CLONE_PARENT (its list is the grandparent's), or a race: not reported
    if (bpf_probe_read_kernel(&cpid, sizeof(cpid), (void *)(child + AGENTD_OFF_THREAD_PID)) || !cpid ||
        bpf_probe_read_kernel(&ppid, sizeof(ppid), (void *)(task + AGENTD_OFF_THREAD_PID)) || !ppid ||
        bpf_probe_read_kernel(&clevel, sizeof(clevel), (void *)(cpid + AGENTD_OFF_PID_LEVEL)) ||
        bpf_probe_read_kernel(&plevel, sizeof(plevel), (void *)(ppid + AGENTD_OFF_PID_LEVEL)) ||
        clevel != plevel || clevel > 32)
        return 0;  // CLONE_NEWPID: the child lives a level below the daemon's namespace
    u64 cu = cpid + AGENTD_OFF_PID_NUMBERS + (u64)clevel * AGENTD_OFF_UPID_SIZE;
    u64 pu = ppid + AGENTD_OFF_PID_NUMBERS + (u64)plevel * AGENTD_OFF_UPID_SIZE;
    if (bpf_probe_read_kernel(&cns, sizeof(cns), (void *)(cu + AGENTD_OFF_UPID_NS)) ||
        bpf_probe_read_kernel(&pns, sizeof(pns), (void *)(pu + AGENTD_OFF_UPID_NS)) || cns != pns ||
        bpf_probe_read_kernel(&nr, sizeof(nr), (void *)(cu + AGENTD_OFF_UPID_NR)) || nr <= 0)
        return 0;
    return nr;
}
#endif

// Thread creations are not processes. task_newtask carries the clone flags of the new
// task (keyed by its tid); sched_process_fork, which fires later, looks them up.
AGENTD_TP(task_newtask)
{
    u32 child = args->pid;
    u64 flags = args->clone_flags;
    clone_flags.update(&child, &flags);
    return 0;
}

AGENTD_TP(sched_process_fork)
{
    u32 child = args->child_pid;
#if !AGENTD_GROUP_DEAD_FIELD && AGENTD_TASK_SIGNAL_OFF >= 0
    exit_reported.delete(&child);
#endif
    u64 *flags = clone_flags.lookup(&child);
    if (flags) {
        u64 f = *flags;
        clone_flags.delete(&child);
        if (f & AGENTD_CLONE_THREAD) {
            stat_inc(STAT_THREADS);
            return 0;
        }
    }
    if (!watched())
        return 0;
    u32 child_pid = args->child_pid;
#if AGENTD_PIDNS
    // args->child_pid is the init namespace's number; the parent (current) must be one the
    // daemon sees, and the child's own number comes from BTF. Without BTF the fork is not
    // reported: the daemon learns the child at its exec (or from /proc).
    u32 ns_tid, ns_tgid;
#if AGENTD_OFF_CHILDREN >= 0
    if (current_ids(&ns_tid, &ns_tgid) == 0)
        child_pid = child_ns_pid(child_pid);
    else
        child_pid = 0;
#else
    child_pid = 0;
#endif
    if (!child_pid) {
        stat_inc(STAT_PIDNS_UNSEEN);
        return 0;
    }
#endif
    struct event_head *h = reserve_head(AGENTD_FORK);
    if (!h)
        return 0;
    h->pid = child_pid;
    h->ppid = h->tgid;
    AGENTD_STR_sched_process_fork_child_comm(h->comm, sizeof(h->comm));
    submit(h);
    return 0;
}

AGENTD_TP(sched_process_exec)
{
    struct event *e;
    u32 pid = args->pid, old_pid = args->old_pid;
#if AGENTD_PIDNS
    // A task the daemon cannot name is never stopped: nobody could continue it.
    u32 ns_tid, ns_tgid;
    if (current_ids(&ns_tid, &ns_tgid)) {
        stat_inc(STAT_PIDNS_UNSEEN);
        return 0;
    }
    pid = ns_tgid;  // after de_thread the exec'ing task leads its group: pid == tgid
    old_pid = ns_tgid;  // the old thread id has no number the daemon can read any more
#endif
#if AGENTD_GATE
    u64 cg = bpf_get_current_cgroup_id();
    if (gated_cgroups.lookup(&cg)) {
        e = gate_events.ringbuf_reserve(sizeof(struct event));
        if (e) {
            fill(&e->h, AGENTD_EXEC);
            e->h.pid = pid;
            e->h.ppid = old_pid;
            AGENTD_STR_sched_process_exec_filename(e->path, sizeof(e->path));
            // Delivered on the way back to user space: the new image runs no instruction.
            if (bpf_send_signal(AGENTD_SIGSTOP) == 0)
                e->h.flags |= AGENTD_F_GATED;
            else
                stat_inc(STAT_SIGNAL_FAILED);
            stat_inc(STAT_EMITTED);
            gate_events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
            return 0;
        }
        // Fail open: a stop nobody hears about would never be continued. The exec is still
        // reported, ungated, below (watched or not).
        stat_inc(STAT_GATE_SKIPPED);
    } else if (!watched()) {
        return 0;
    }
#else
    if (!watched())
        return 0;
#endif
    e = reserve_full(AGENTD_EXEC);
    if (!e)
        return 0;
    e->h.pid = pid;
    e->h.ppid = old_pid;
    AGENTD_STR_sched_process_exec_filename(e->path, sizeof(e->path));
    submit(e);
    return 0;
}

// sched_process_exit has no exit code. do_exit() stores it in task_struct.exit_code (a wait
// status) before the tracepoint fires, so where BTF says where that field is, the exit
// program reads it from the current task: every exit, no other program.
//
// Without BTF, and this kernel has no kprobes and refuses fentry: the code is remembered
// per process where it is decided, then read at the exit. Signal deaths always (signal
// tracepoints cost nothing to other processes); voluntary exits only with AGENTD_EXIT_CODE:
// exit_group(2) is a syscall, and enabling any syscall tracepoint sends EVERY task's
// syscalls through the traced path (measured here: getppid 166 -> 206 ns host-wide).
#if AGENTD_EXIT_GROUP_CODES
AGENTD_TP(sys_enter_exit_group)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 c = ((u32)args->error_code & 0xff) << 8;
    exit_codes.update(&tgid, &c);  // the last exit_group caller's code is the process's
    return 0;
}
#endif

#if AGENTD_SIGNAL_EXIT_CODES
// Signals whose default action terminates the process (signal(7)).
#define AGENTD_FATAL_DEFAULT ((1u << 1) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5) | \
    (1u << 6) | (1u << 7) | (1u << 8) | (1u << 9) | (1u << 10) | (1u << 11) | (1u << 12) | \
    (1u << 13) | (1u << 14) | (1u << 15) | (1u << 16) | (1u << 24) | (1u << 25) | \
    (1u << 26) | (1u << 27) | (1u << 29) | (1u << 30) | (1u << 31))
#define AGENTD_SIGKILL 9

static __always_inline int fatal_by_default(int sig)
{
    return sig > 0 && sig < 32 && (AGENTD_FATAL_DEFAULT & (1u << sig));
}

// A fatal signal with its default action is turned into a group exit when it is sent
// (complete_signal), and every thread then dequeues SIGKILL: the signal that decided the
// exit is only visible here, at generation. Remember the last one sent to each target.
AGENTD_TP(signal_generate)
{
    if (args->result != 0 || !fatal_by_default(args->sig))  // 0 = TRACE_SIGNAL_DELIVERED
        return 0;
    u32 target = args->pid;
    u32 sig = args->sig;
    fatal_sent.update(&target, &sig);
    return 0;
}

AGENTD_TP(signal_deliver)
{
    int sig = args->sig;
    if (!fatal_by_default(sig))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = id;
    if (args->sa_handler != 0) {  // handled (not SIG_DFL): this one decides nothing
        u32 *sent = fatal_sent.lookup(&tgid);
        if (sent && *sent == (u32)sig)
            fatal_sent.delete(&tgid);
        return 0;
    }
    u32 c = sig;
    if (sig == AGENTD_SIGKILL) {
        // SIGKILL is also how exit_group(2) stops a process's other threads; that one is
        // never generated. Only a generated fatal signal names the cause.
        u32 *sent = fatal_sent.lookup(&tgid);
        if (!sent)
            sent = fatal_sent.lookup(&tid);
        if (!sent)
            return 0;
        c = *sent;
    }
    exit_codes.insert(&tgid, &c);  // BPF_NOEXIST: an exit_group code or earlier signal wins
    return 0;
}
#endif  // AGENTD_SIGNAL_EXIT_CODES

AGENTD_TP(sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    // One event per process: when its last thread exits.
#if AGENTD_GROUP_DEAD_FIELD
    if (!args->group_dead)
        return 0;
#elif AGENTD_TASK_SIGNAL_OFF >= 0
    // do_exit() has already counted this thread out of signal->live (group_dead = it hit 0).
    {
        u64 task = bpf_get_current_task();
        u64 sig = 0;
        int live = 1;
        if (bpf_probe_read_kernel(&sig, sizeof(sig), (void *)(task + AGENTD_TASK_SIGNAL_OFF)) || !sig)
            return 0;
        if (bpf_probe_read_kernel(&live, sizeof(live), (void *)(sig + AGENTD_SIGNAL_LIVE_OFF)) || live != 0)
            return 0;
        u8 one = 1;
        if (exit_reported.insert(&tgid, &one) != 0)  // another thread of it reported already
            return 0;
    }
#else
    if ((u32)id != tgid)  // no way to see the last thread: the leader's exit stands for it
        return 0;
#endif
#if AGENTD_TASK_EXIT_CODE_OFF >= 0
    u32 c = 0;
    u64 task_ = bpf_get_current_task();
    int have_code = bpf_probe_read_kernel(&c, sizeof(c), (void *)(task_ + AGENTD_TASK_EXIT_CODE_OFF)) == 0;
#else
    u32 *code = exit_codes.lookup(&tgid);
    u32 c = code ? *code : 0;
    int have_code = code != 0;
    if (code)
        exit_codes.delete(&tgid);
    fatal_sent.delete(&tgid);
#endif
    if (!watched())
        return 0;
#if AGENTD_PIDNS
    u32 ns_tid, ns_tgid;
    if (current_ids(&ns_tid, &ns_tgid)) {
        stat_inc(STAT_PIDNS_UNSEEN);
        return 0;
    }
#endif
    struct event_head *h = reserve_head(AGENTD_EXIT);
    if (!h)
        return 0;
    h->pid = h->tgid;  // fill(): the daemon's number for it
    if (have_code) {
        h->exit_code = c;
        h->flags |= AGENTD_F_EXIT_CODE;
    }
    submit(h);  // comm: fill() took the exiting task's own
    return 0;
}

#ifdef AGENTD_ATTACH_mark_victim
AGENTD_TP(mark_victim)
{
#if AGENTD_PIDNS
    // The victim is not current: its pid is the init namespace's. Not reported; its exit is.
    stat_inc(STAT_PIDNS_UNSEEN);
    return 0;
#endif
    struct event_head *h = reserve_head(AGENTD_OOM_VICTIM);
    if (!h)
        return 0;
    h->pid = args->pid;
#ifdef AGENTD_HAS_mark_victim_comm
    AGENTD_STR_mark_victim_comm(h->comm, sizeof(h->comm));
#else
    h->comm[0] = 0;  // before 6.8 mark_victim carries only the pid
#endif
    submit(h);
    return 0;
}
#endif

AGENTD_TP(cgroup_attach_task)
{
    // v1 hierarchies fire too; only the v2 one carries the ids the gate and tree use.
    if (args->dst_root != AGENTD_V2_ROOT)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 moved = args->pid;
    int self_move = moved == (u32)(id >> 32) || moved == (u32)id;
#if AGENTD_PIDNS
    // Only a task that moves itself can be named (it is current); another's move is not
    // reported (the daemon sees where it went at the task's next exec or its own checks).
    u32 ns_tid, ns_tgid;
    if (!self_move || current_ids(&ns_tid, &ns_tgid)) {
        stat_inc(STAT_PIDNS_UNSEEN);
        return 0;
    }
    moved = moved == (u32)(id >> 32) ? ns_tgid : ns_tid;
#endif
    struct event *e = reserve_full(AGENTD_CGROUP_ATTACH);
    if (!e)
        return 0;
    e->h.pid = moved;
    e->h.cgroup_id = args->dst_id;
    if (self_move)
        e->h.flags |= AGENTD_F_SELF_MOVE;
    AGENTD_STR_cgroup_attach_task_comm(e->h.comm, sizeof(e->h.comm));
    AGENTD_STR_cgroup_attach_task_dst_path(e->path, sizeof(e->path));
    submit(e);
    return 0;
}
