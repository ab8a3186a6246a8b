# Settings for the project's own targets (tests, benchmarks, examples); never propagated to users.
# kvevict_portable_settings: warnings, standard and sanitizers, for any CPU; kvevict_dev_settings adds
# -march=native with KVEVICT_NATIVE.
add_library(kvevict_portable_settings INTERFACE)
target_compile_features(kvevict_portable_settings INTERFACE cxx_std_${KVEVICT_CXX_STANDARD})
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(kvevict_portable_settings INTERFACE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
                                                        -Wsign-conversion -Wnon-virtual-dtor -Wold-style-cast)
  if(KVEVICT_WERROR)
    target_compile_options(kvevict_portable_settings INTERFACE -Werror)
  endif()
  if(KVEVICT_SANITIZE)
    target_compile_options(kvevict_portable_settings INTERFACE -fsanitize=address,undefined -fno-sanitize-recover=all
                                                          -fno-omit-frame-pointer)
    target_link_options(kvevict_portable_settings INTERFACE -fsanitize=address,undefined -fno-sanitize-recover=all)
  endif()
endif()
set_target_properties(kvevict_portable_settings PROPERTIES INTERFACE_CXX_EXTENSIONS OFF)

add_library(kvevict_dev_settings INTERFACE)
target_link_libraries(kvevict_dev_settings INTERFACE kvevict_portable_settings)
if(KVEVICT_NATIVE)
  # GCC 12 reports false maybe-uninitialized and array-bounds warnings inside its own AVX-512 intrinsics
  # when Eigen uses them on short dynamic-size arrays (code paths guarded by a size check it cannot see).
  target_compile_options(kvevict_dev_settings INTERFACE -march=native
                         $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized -Wno-array-bounds>)
endif()
set_target_properties(kvevict_dev_settings PROPERTIES INTERFACE_CXX_EXTENSIONS OFF)
