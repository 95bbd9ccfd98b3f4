//! epoll_server (being written).
