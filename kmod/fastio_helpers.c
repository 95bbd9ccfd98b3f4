// SPDX-License-Identifier: GPL-2.0
/*
 * Wrappers for what Linux 7.3 offers only as static inline functions or macros, so that
 * the Rust part of fastio.ko can call them. Nothing else lives here: no logic of the
 * module's own. The prototypes are in fastio_helpers.h (W=1 wants them).
 */
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/fs.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/resource.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/user.h>
#include <linux/task_work.h>
#include <linux/uaccess.h>
#include <linux/uio.h>
#include <net/sock.h>
#include <linux/wait.h>

#include "fastio_helpers.h"

/* need_resched(): this CPU has a reschedule request pending (incl. the lazy one). */
bool fastio_need_resched(void)
{
	return need_resched();
}

/*
 * set_notify_signal() without wake_up_state(), which is not exported: makes
 * signal_pending() true for `task` so that an interruptible wait of it (a blocking FIFO
 * read in a helper thread) returns; the flag is cleared on the way back to user space.
 * The caller guarantees `task` is alive (it is inside an ioctl of this module).
 */
void fastio_notify_signal(struct task_struct *task)
{
	if (!test_and_set_tsk_thread_flag(task, TIF_NOTIFY_SIGNAL)) {
		wake_up_process(task);
		kick_process(task);
	}
}

/*
 * task_work_pending(current), and if so make the current thread return to user space
 * and restart its system call (set_notify_signal(current) without the wake-up it does
 * not need): work queued on a thread that stays in the kernel (the release of a file
 * whose last reference it dropped, CPU-time timers) only runs on the way out.
 */
bool fastio_task_work_to_run(void)
{
	if (!task_work_pending(current))
		return false;
	set_thread_flag(TIF_NOTIFY_SIGNAL);
	return true;
}

/* get_uid(current_user()): a counted reference to the caller's user. */
struct user_struct *fastio_get_current_user(void)
{
	return get_uid(current_user());
}

/* rlimit(RLIMIT_MEMLOCK) of the caller. */
unsigned long fastio_rlimit_memlock(void)
{
	return rlimit(RLIMIT_MEMLOCK);
}

/* &user->locked_vm (an atomic_long_t: a plain `long` counter). */
atomic_long_t *fastio_user_locked_vm(struct user_struct *user)
{
	return &user->locked_vm;
}

/* init_waitqueue_func_entry() */
void fastio_init_wait_entry(struct wait_queue_entry *wq, wait_queue_func_t func)
{
	init_waitqueue_func_entry(wq, func);
}

/* list_del_init_careful() of a wait entry: the POLLFREE removal (io_uring/poll.c). */
void fastio_wait_entry_del_careful(struct wait_queue_entry *wq)
{
	list_del_init_careful(&wq->entry);
}

/* vfs_poll() through `pt`, whose queue callback is `qproc` and key `events`; `pt` is
 * embedded in the caller's request so that `qproc` can find the request. */
__poll_t fastio_vfs_poll(struct file *file, struct poll_table_struct *pt,
			 poll_queue_proc qproc, __poll_t events)
{
	init_poll_funcptr(pt, qproc);
	pt->_key = events;
	return vfs_poll(file, pt);
}

/* The FMODE_* bits (and O_DIRECT) the module looks at, as FASTIO_FMODE_* (macros with
 * casts). */
unsigned int fastio_file_mode(struct file *file)
{
	fmode_t m = file->f_mode;
	unsigned int out = 0;

	if (m & FMODE_PREAD)
		out |= FASTIO_FMODE_PREAD;
	if (m & FMODE_PWRITE)
		out |= FASTIO_FMODE_PWRITE;
	if (m & FMODE_STREAM)
		out |= FASTIO_FMODE_STREAM;
	if (m & FMODE_ATOMIC_POS)
		out |= FASTIO_FMODE_ATOMIC_POS;
	if (m & FMODE_NOWAIT)
		out |= FASTIO_FMODE_NOWAIT;
	if (S_ISREG(file_inode(file)->i_mode))
		out |= FASTIO_FMODE_REGULAR;
	if (READ_ONCE(file->f_flags) & O_DIRECT)
		out |= FASTIO_FMODE_DIRECT;
	if (m & FMODE_READ)
		out |= FASTIO_FMODE_READ;
	if (m & FMODE_WRITE)
		out |= FASTIO_FMODE_WRITE;
	if (S_ISBLK(file_inode(file)->i_mode))
		out |= FASTIO_FMODE_BLOCKDEV;
	return out;
}

/* file_dentry(file)->d_name.name: the name of an open file's dentry (stable while the
 * file is held; "[io_uring]" for an io_uring instance). */
const unsigned char *fastio_file_name(struct file *file)
{
	return file_dentry(file)->d_name.name;
}

/* mutex_trylock(&file->f_pos_lock) (a macro under lockdep); only for FMODE_ATOMIC_POS. */
bool fastio_f_pos_trylock(struct file *file)
{
	return mutex_trylock(&file->f_pos_lock);
}

/* mutex_lock_killable(&file->f_pos_lock) (a macro); 0 or -EINTR. */
int fastio_f_pos_lock_killable(struct file *file)
{
	return mutex_lock_killable(&file->f_pos_lock);
}

void fastio_f_pos_unlock(struct file *file)
{
	mutex_unlock(&file->f_pos_lock);
}

/*
 * A read that only copies what is in the page cache (IOCB_NOWAIT | IOCB_NOIO), for the
 * polling workers' first attempt at a regular file. RWF_NOWAIT alone still starts
 * readahead, and submitting its bios may sleep (waiting for a free request when the
 * device's queue is full): a polling worker must never sleep. What is not cached is
 * read by a helper thread, readahead included. No RWF_* flag asks for IOCB_NOIO,
 * hence the kiocb built here.
 */
ssize_t fastio_read_cached(struct file *file, struct iov_iter *iter, loff_t *pos)
{
	struct kiocb kiocb;
	ssize_t ret;

	init_sync_kiocb(&kiocb, file);
	kiocb.ki_flags |= IOCB_NOWAIT | IOCB_NOIO;
	kiocb.ki_pos = *pos;
	ret = vfs_iocb_iter_read(file, &kiocb, iter);
	if (ret > 0)
		*pos = kiocb.ki_pos;
	return ret;
}

/* vfs_poll() without a poll table: the file's readiness now, joining no wait queue. */
__poll_t fastio_poll_now(struct file *file)
{
	return vfs_poll(file, NULL);
}

/* sock_error(sock->sk): the socket's pending error, negative, cleared (SO_ERROR). */
int fastio_sock_error(struct socket *sock)
{
	return sock_error(sock->sk);
}

/* access_ok() of a user range (a macro). */
bool fastio_access_ok(unsigned long addr, unsigned long len)
{
	return access_ok((const void __user *)addr, len);
}

/*
 * get_user()/put_user() of one aligned u32 or u16 (macros): a single load or store, so
 * a word that user space updates concurrently (a provided-buffer ring's tail) is never
 * read torn, as copy_from_user() (which may copy byte by byte) could. 0 or -EFAULT.
 */
int fastio_get_user_u32(unsigned long addr, u32 *out)
{
	return get_user(*out, (const u32 __user *)addr);
}

int fastio_get_user_u16(unsigned long addr, u16 *out)
{
	return get_user(*out, (const u16 __user *)addr);
}

int fastio_put_user_u32(unsigned long addr, u32 value)
{
	return put_user(value, (u32 __user *)addr);
}

/* TASK_SIZE_MAX: the end of the largest user address space (a macro). */
unsigned long fastio_task_size_max(void)
{
	return TASK_SIZE_MAX;
}
