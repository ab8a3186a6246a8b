# Builds and runs the consumer project against kvevict. Arguments: SOURCE, WORK, MODE, CXX.
file(REMOVE_RECURSE ${WORK})
set(prefix ${WORK}/prefix)
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}")
  endif()
endfunction()
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} -S ${SOURCE} -B ${WORK}/kvevict -DCMAKE_INSTALL_PREFIX=${prefix} -DKVEVICT_BUILD_TESTS=OFF
      -DKVEVICT_BUILD_BENCHMARKS=OFF -DKVEVICT_BUILD_EXAMPLES=OFF -DKVEVICT_INSTALL=ON)
  run(${CMAKE_COMMAND} --install ${WORK}/kvevict)
endif()
run(${CMAKE_COMMAND} -S ${SOURCE}/tests/consumer -B ${WORK}/build -DCMAKE_CXX_COMPILER=${CXX}
    -DKVEVICT_CONSUMER_MODE=${MODE} -DKVEVICT_SOURCE=${SOURCE} -DCMAKE_PREFIX_PATH=${prefix})
run(${CMAKE_COMMAND} --build ${WORK}/build)
run(${WORK}/build/consumer)
message(STATUS "consumer (${MODE}) built and ran")
