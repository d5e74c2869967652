// The MPI C API for Swift: <mpi.h> plus accessors for the handles that are macros
// (Open MPI and MPICH define MPI_COMM_WORLD, MPI_BYTE... as macros Swift cannot import).
#ifndef FVD_CMPI_H
#define FVD_CMPI_H
#if !__has_include(<mpi.h>)
#error "MPI not found (pkg-config mpi): install Open MPI (apt-get install libopenmpi-dev openmpi-bin) or MPICH (apt-get install libmpich-dev mpich)"
#endif
#include <mpi.h>

static inline MPI_Comm fvd_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm fvd_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype fvd_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Request fvd_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *fvd_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *fvd_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline MPI_Errhandler fvd_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int fvd_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int fvd_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
static inline int fvd_mpi_success(void) { return MPI_SUCCESS; }
static inline int fvd_mpi_undefined(void) { return MPI_UNDEFINED; }
static inline void *fvd_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Datatype fvd_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype fvd_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype fvd_mpi_int8(void) { return MPI_INT8_T; }
static inline MPI_Datatype fvd_mpi_int16(void) { return MPI_INT16_T; }
static inline MPI_Datatype fvd_mpi_int32(void) { return MPI_INT32_T; }
static inline MPI_Datatype fvd_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype fvd_mpi_uint8(void) { return MPI_UINT8_T; }
static inline int fvd_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline MPI_Info fvd_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline MPI_Datatype fvd_mpi_int(void) { return MPI_INT; }
static inline MPI_Op fvd_mpi_land(void) { return MPI_LAND; }
static inline MPI_Op fvd_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op fvd_mpi_prod(void) { return MPI_PROD; }
static inline MPI_Op fvd_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op fvd_mpi_min(void) { return MPI_MIN; }

#endif
