/*
 * nsmagic-init: pid 1 of a container, once the payload process is running.
 *
 * The Python pid 1 forks the container's main process, then executes this program in its
 * place, so that an idle container costs one Python process instead of two (a forked
 * interpreter keeps a private copy of every page it writes; this program has almost none).
 * It does what nsmagic/runtime/init.py does after the fork, and nothing more:
 *
 *   - forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the payload;
 *   - reaps every zombie (orphans of the payload are reparented to pid 1);
 *   - if the lifeline (a pipe from the fork server) reaches end of file, the supervisor is
 *     gone: kills everything and exits 137;
 *   - when the payload ends, reports how on the events socket as one JSON datagram
 *     {"event":"payload-exited","code":N} or {"event":"payload-exited","signal":N}
 *     (EVENT_PAYLOAD_EXITED below is protocol.py's Event.PAYLOAD_EXITED, by name),
 *     kills what the payload left running, and exits with its status.
 *
 * Usage (from init.py, never by hand): nsmagic-init PAYLOAD_PID EVENTS_FD LIFELINE_FD [privileged]
 * EVENTS_FD may also be sync:FD, a socket on which the events socket arrives later (SCM_RIGHTS,
 * with any one-datagram message): a warm container's pid 1 becomes nsmagic-init while idle,
 * and end of file there means the container was discarded. A fifth argument keeps every
 * capability (--privileged). The signals above and SIGCHLD arrive blocked (the mask survives
 * execve), so none is lost between the fork and here; they are read from a signalfd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Event.PAYLOAD_EXITED of nsmagic/runtime/protocol.py. */
#define EVENT_PAYLOAD_EXITED "payload-exited"

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

static pid_t payload;
static int payload_done;
static int payload_status;

/* The message socket, from a datagram's SCM_RIGHTS; -1 at end of file (or on error). */
static int receive_fd(int sock)
{
	char data[64];
	char control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {data, sizeof data};
	struct msghdr message = {0};
	message.msg_iov = &iov;
	message.msg_iovlen = 1;
	message.msg_control = control;
	message.msg_controllen = sizeof control;
	if (recvmsg(sock, &message, MSG_CMSG_CLOEXEC) <= 0)
		return -1;
	struct cmsghdr *header = CMSG_FIRSTHDR(&message);
	if (!header || header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS)
		return -1;
	int fd;
	memcpy(&fd, CMSG_DATA(header), sizeof fd);
	return fd;
}

/* Reap every zombie without blocking; note the payload's status when it is among them. */
static void reap(void)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);
		if (pid <= 0)
			return;
		if (pid == payload) {
			payload_done = 1;
			payload_status = status;
		}
	}
}

static void reap_all_blocking(void)
{
	while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
		;
}

/* Without a pid namespace kill(-1) would reach the whole host: kill our children
 * generation by generation instead, as each one's orphans come back to us (subreaper). */
static void kill_children(void)
{
	char path[64], buffer[4096];
	for (;;) {
		snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
		FILE *file = fopen(path, "r");
		if (!file)
			return;
		size_t length = fread(buffer, 1, sizeof buffer - 1, file);
		fclose(file);
		buffer[length] = '\0';
		int any = 0;
		for (char *token = strtok(buffer, " \n"); token; token = strtok(NULL, " \n")) {
			kill((pid_t)atoi(token), SIGKILL);
			any = 1;
		}
		if (!any)
			return;
		reap_all_blocking();
	}
}

static void kill_leftovers(void)
{
	if (getpid() == 1) {
		/* pid 1 of its own namespace: kill(-1) reaches exactly the container. */
		kill(-1, SIGKILL);
		reap_all_blocking();
	} else {
		kill_children();
	}
}

/* Keep only CAP_KILL (to stop what the payload left, whoever it runs as) and allow no
 * privilege gain; pid 1 needs nothing else from here on. */
static void drop_capabilities(void)
{
	struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &header, data) == 0) {
		for (int i = 0; i < 2; i++) {
			__u32 keep = i == 0 ? (1u << CAP_KILL) : 0;
			data[i].effective &= keep;
			data[i].permitted &= keep;
			data[i].inheritable = 0;
		}
		syscall(SYS_capset, &header, data);
	}
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

int main(int argc, char **argv)
{
	/* First of all: execve made us dumpable again. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	prctl(PR_SET_NAME, "nsmagic-init", 0, 0, 0);
	prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	if (argc != 4 && argc != 5)
		return 125;
	payload = (pid_t)atoi(argv[1]);
	int events = -1, sync = -1;
	if (strncmp(argv[2], "sync:", 5) == 0)
		sync = atoi(argv[2] + 5);
	else
		events = atoi(argv[2]);
	int lifeline = atoi(argv[3]);
	if (argc == 4)  /* a fifth argument means --privileged: keep every capability */
		drop_capabilities();

	sigset_t signals;
	sigemptyset(&signals);
	sigaddset(&signals, SIGCHLD);
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaddset(&signals, forwarded[i]);
	sigprocmask(SIG_BLOCK, &signals, NULL);
	int signals_fd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
	if (signals_fd < 0)
		return 125;

	reap();  /* the payload may have ended before we got here */
	while (!payload_done) {
		struct pollfd fds[3] = {{signals_fd, POLLIN, 0}, {lifeline, POLLIN, 0},
					{sync, POLLIN, 0}};  /* a negative fd is skipped */
		if (poll(fds, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 125;
		}
		if (fds[2].revents) {
			events = receive_fd(sync);
			close(sync);
			sync = -1;
			if (events < 0) {
				/* Discarded before it was used: nobody is waiting for a report. */
				kill_leftovers();
				_exit(0);
			}
		}
		if (fds[1].revents) {
			char byte;
			if (read(lifeline, &byte, 1) <= 0) {
				/* The supervisor outside is gone: nobody will clean up after us. */
				kill_leftovers();
				_exit(137);
			}
		}
		if (fds[0].revents & POLLIN) {
			struct signalfd_siginfo info;
			while (read(signals_fd, &info, sizeof info) == sizeof info) {
				if (info.ssi_signo != SIGCHLD)
					kill(payload, (int)info.ssi_signo);
			}
			reap();
		}
	}

	char message[96];
	int code;
	if (WIFSIGNALED(payload_status)) {
		code = 128 + WTERMSIG(payload_status);
		snprintf(message, sizeof message, "{\"event\":\"" EVENT_PAYLOAD_EXITED "\",\"signal\":%d}",
			 WTERMSIG(payload_status));
	} else {
		code = WEXITSTATUS(payload_status);
		snprintf(message, sizeof message, "{\"event\":\"" EVENT_PAYLOAD_EXITED "\",\"code\":%d}", code);
	}
	if (events >= 0)
		send(events, message, strlen(message), MSG_NOSIGNAL);
	kill_leftovers();
	return code;
}
