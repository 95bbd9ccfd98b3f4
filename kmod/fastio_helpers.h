/* SPDX-License-Identifier: GPL-2.0 */
/* Prototypes of fastio_helpers.c (called from Rust; see sys.rs for the Rust side). */
#ifndef FASTIO_HELPERS_H
#define FASTIO_HELPERS_H

#include <linux/poll.h>
#include <linux/types.h>
#include <linux/wait.h>

struct file;
struct iov_iter;
struct poll_table_struct;
struct socket;
struct task_struct;
struct user_struct;
struct wait_queue_entry;

/* Bits of fastio_file_mode(). */
#define FASTIO_FMODE_PREAD	(1u << 0)
#define FASTIO_FMODE_PWRITE	(1u << 1)
#define FASTIO_FMODE_STREAM	(1u << 2)
#define FASTIO_FMODE_ATOMIC_POS	(1u << 3)
#define FASTIO_FMODE_NOWAIT	(1u << 4)
#define FASTIO_FMODE_REGULAR	(1u << 5)
#define FASTIO_FMODE_DIRECT	(1u << 6)
#define FASTIO_FMODE_READ	(1u << 7)
#define FASTIO_FMODE_WRITE	(1u << 8)
#define FASTIO_FMODE_BLOCKDEV	(1u << 9)

bool fastio_need_resched(void);
bool fastio_task_work_to_run(void);
void fastio_notify_signal(struct task_struct *task);
struct user_struct *fastio_get_current_user(void);
unsigned long fastio_rlimit_memlock(void);
atomic_long_t *fastio_user_locked_vm(struct user_struct *user);
void fastio_init_wait_entry(struct wait_queue_entry *wq, wait_queue_func_t func);
void fastio_wait_entry_del_careful(struct wait_queue_entry *wq);
__poll_t fastio_vfs_poll(struct file *file, struct poll_table_struct *pt,
			 poll_queue_proc qproc, __poll_t events);
unsigned int fastio_file_mode(struct file *file);
const unsigned char *fastio_file_name(struct file *file);
bool fastio_f_pos_trylock(struct file *file);
int fastio_f_pos_lock_killable(struct file *file);
void fastio_f_pos_unlock(struct file *file);
ssize_t fastio_read_cached(struct file *file, struct iov_iter *iter, loff_t *pos);
__poll_t fastio_poll_now(struct file *file);
int fastio_sock_error(struct socket *sock);
bool fastio_access_ok(unsigned long addr, unsigned long len);
unsigned long fastio_task_size_max(void);
int fastio_get_user_u32(unsigned long addr, u32 *out);
int fastio_get_user_u16(unsigned long addr, u16 *out);
int fastio_put_user_u32(unsigned long addr, u32 value);

#endif
